/**
 * Issue 9's comparison: the same workload (create a sandbox from a busybox
 * root directory, run `true`, take the time to its result) through krunbox's
 * libkrun backend and through microsandbox's `msb` (npm `microsandbox`),
 * side by side in one nested test host (an L1 VM with emulated SVM: the only
 * place libkrun boots on these machines). Both sides get the same vCPUs and
 * memory; one warm-up run of each is discarded, then at least 5 runs
 * alternate; the figure is the true median of each side. Goal: krunbox at
 * most msb's time.
 *
 *   deno run -A bench/libkrun_vs_msb_nested.ts [runs=5] [cpus=1] [memoryMiB=256]
 */

import { bootNestedHost, L1 } from "../tests/nested/host.ts";
import { ensureMsb } from "./msb.ts";
import { median } from "./stats.ts";

const runs = Number(Deno.args[0] ?? 5);
const cpus = Number(Deno.args[1] ?? 1);
const memory = Number(Deno.args[2] ?? 256);
if (!Number.isInteger(runs) || runs < 5) throw new Error(`runs must be an integer >= 5 (got ${Deno.args[0]})`);
if (!Number.isInteger(cpus) || cpus < 1 || !Number.isInteger(memory) || memory < 64) {
  throw new Error(`cpus must be >= 1 and memory >= 64 MiB (got ${cpus}, ${memory})`);
}
const msbPkg = await ensureMsb();

await using l1 = await bootNestedHost("bench-l1", [{ guestPath: "/opt/msb", hostPath: msbPkg }]);
const out = await l1.execWith(`${L1.denoDir}/deno`, {
  args: [
    "run",
    "-A",
    "--no-check",
    "--no-lock",
    "bench/nested/create_exec.ts",
    "/opt/msb/bin/msb",
    String(runs),
    String(cpus),
    String(memory),
  ],
  cwd: L1.project,
  env: { KRUNBOX_HOME: L1.home, DENO_DIR: `${L1.home}/deno`, HOME: "/root", NO_COLOR: "1" },
  timeout: 20 * 60_000,
});
if (!out.success) throw new Error(`the nested workload failed:\n${out.stdout}\n${out.stderr}`);
const { krunbox, msb } = JSON.parse(out.stdout.trim().split("\n").at(-1)!) as {
  krunbox: number[];
  msb: number[];
};
if (krunbox.length !== runs || msb.length !== runs) throw new Error(`expected ${runs} runs a side:\n${out.stdout}`);
const fmt = (xs: number[]) => xs.map((x) => (x / 1000).toFixed(1)).join(", ");
console.log(`in the L1, ${cpus} vCPU(s) and ${memory} MiB each, ${runs} runs after a warm-up:`);
console.log(
  `  krunbox (libkrun) create → first exec: ${fmt(krunbox)} s, median ${(median(krunbox) / 1000).toFixed(2)} s`,
);
console.log(`  msb create + exec:                     ${fmt(msb)} s, median ${(median(msb) / 1000).toFixed(2)} s`);
console.log(`median ratio krunbox/msb = ${(median(krunbox) / median(msb)).toFixed(2)} (goal <= 1.0)`);
