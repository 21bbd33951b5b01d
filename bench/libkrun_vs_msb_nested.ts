/**
 * Issue 9's comparison: the same workload (create a sandbox from a busybox
 * root directory, run `true`, take the time to its result) through krunbox's
 * libkrun backend and through microsandbox's `msb` (npm `microsandbox`),
 * side by side in one nested test host (an L1 VM with emulated SVM: the only
 * place libkrun boots on these machines). Goal: krunbox at most msb's time.
 *
 *   deno run -A bench/libkrun_vs_msb_nested.ts [runs=2]
 */

import { bootNestedHost, L1 } from "../tests/nested/host.ts";
import { ensureMsb } from "./msb.ts";

const runs = Deno.args[0] ?? "2";
const msbPkg = await ensureMsb();

await using l1 = await bootNestedHost("bench-l1", [{ guestPath: "/opt/msb", hostPath: msbPkg }]);
const out = await l1.execWith(`${L1.denoDir}/deno`, {
  args: ["run", "-A", "--no-check", "--no-lock", "bench/nested/create_exec.ts", "/opt/msb/bin/msb", runs],
  cwd: L1.project,
  env: { KRUNBOX_HOME: L1.home, DENO_DIR: `${L1.home}/deno`, HOME: "/root", NO_COLOR: "1" },
  timeout: 20 * 60_000,
});
if (!out.success) throw new Error(`the nested workload failed:\n${out.stdout}\n${out.stderr}`);
const { krunbox, msb } = JSON.parse(out.stdout.trim().split("\n").at(-1)!) as { krunbox: number[]; msb: number[] };
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (xs: number[]) => xs.map((x) => (x / 1000).toFixed(1)).join(", ");
console.log(`in the L1: krunbox (libkrun) create → first exec: ${fmt(krunbox)} s; msb create + exec: ${fmt(msb)} s`);
console.log(`median ratio krunbox/msb = ${(median(krunbox) / median(msb)).toFixed(2)} (goal <= 1.0)`);
