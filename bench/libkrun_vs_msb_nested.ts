/**
 * Issue 9's comparison: the same workload (create a sandbox from a busybox
 * root directory, run `true`, take the time to its result) through krunbox's
 * libkrun backend and through microsandbox's `msb` (npm `microsandbox`),
 * side by side in one nested test host (an L1 VM with emulated SVM: the only
 * place libkrun boots on these machines). Both sides get the same vCPUs and
 * memory; one warm-up run of each is discarded, then at least 5 runs
 * alternate; the figure is the true median of each side, and the median of
 * each of krunbox's boot phases shows where its time goes. Goal: krunbox at
 * most 0.8× msb's time (issue 18).
 *
 *   deno run -A bench/libkrun_vs_msb_nested.ts [runs=5] [cpus=1] [memoryMiB=256]
 */

import { L1_MSB, runInL1 } from "./nested/l1.ts";
import { median } from "./stats.ts";

const runs = Number(Deno.args[0] ?? 5);
const cpus = Number(Deno.args[1] ?? 1);
const memory = Number(Deno.args[2] ?? 256);
if (!Number.isInteger(runs) || runs < 5) throw new Error(`runs must be an integer >= 5 (got ${Deno.args[0]})`);
if (!Number.isInteger(cpus) || cpus < 1 || !Number.isInteger(memory) || memory < 64) {
  throw new Error(`cpus must be >= 1 and memory >= 64 MiB (got ${cpus}, ${memory})`);
}
const { krunbox, msb, phases, load } = await runInL1<{
  krunbox: number[];
  msb: number[];
  phases: Record<string, number[]>;
  load: string;
}>("bench/nested/create_exec.ts", [
  L1_MSB,
  String(runs),
  String(cpus),
  String(memory),
]);
if (krunbox.length !== runs || msb.length !== runs) {
  throw new Error(`expected ${runs} runs a side:\n${JSON.stringify({ krunbox, msb })}`);
}
const fmt = (xs: number[]) => xs.map((x) => (x / 1000).toFixed(1)).join(", ");
console.log(
  `in the L1, ${cpus} vCPU(s) and ${memory} MiB each, ${runs} runs after a warm-up (L1 load average ${load}):`,
);
console.log(
  `  krunbox (libkrun) create → first exec: ${fmt(krunbox)} s, median ${(median(krunbox) / 1000).toFixed(2)} s`,
);
console.log(`  msb create + exec:                     ${fmt(msb)} s, median ${(median(msb) / 1000).toFixed(2)} s`);
console.log(`median ratio krunbox/msb = ${(median(krunbox) / median(msb)).toFixed(2)} (goal <= 0.8)`);
console.log("krunbox's boot phases (median of the runs; `first exec` is after create() returned):");
for (const [name, xs] of Object.entries(phases)) {
  console.log(`  ${name.padEnd(16)} ${(median(xs) / 1000).toFixed(2).padStart(7)} s`);
}
