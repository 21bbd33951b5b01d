/**
 * Issue 17's CLI exec comparison, side by side in one nested test host (the
 * only place msb's VMs run here): `krunbox exec NAME true` (the native front
 * door setup installs as `$KRUNBOX_HOME/bin/krunbox`) and `msb exec NAME --
 * true` as processes against one running sandbox each (krunbox on libkrun,
 * same busybox root and memory), the Deno CLI's exec and `--version` (Deno's
 * start alone) for reference, and krunbox's own API round trip
 * `sb.exec("true")` as the floor. Rounds alternate after a warm-up; quotes
 * medians and the ratio. Goal: CLI exec at most 0.5× msb's.
 *
 *   deno run -A bench/exec_vs_msb_nested.ts [runs=5]
 *
 * @module
 */

import { L1_MSB, runInL1 } from "./nested/l1.ts";
import { median } from "./stats.ts";

const runs = Number(Deno.args[0] ?? 5);
if (!Number.isInteger(runs) || runs < 3) throw new Error(`runs must be an integer >= 3 (got ${Deno.args[0]})`);
const r = await runInL1<
  { load: string; cli: number[]; deno: number[]; version: number[]; msb: number[]; api: number[] }
>(
  "bench/nested/exec_warm.ts",
  [
    L1_MSB,
    String(runs),
  ],
);
const fmt = (xs: number[]) =>
  `${xs.map((x) => (x / 1000).toFixed(2)).join(", ")} s, median ${(median(xs) / 1000).toFixed(2)} s`;
console.log(`in the L1, ${runs} rounds after a warm-up, one running sandbox a side (L1 load average ${r.load}):`);
console.log(`  krunbox exec NAME true (process, native front door): ${fmt(r.cli)}`);
console.log(`  deno run cli.ts exec NAME true (process, Deno CLI): ${fmt(r.deno)}`);
console.log(`  deno run cli.ts --version (process, Deno's start):  ${fmt(r.version)}`);
console.log(`  msb exec NAME -- true (process):  ${fmt(r.msb)}`);
console.log(`  sb.exec("true") (API, in process): ${fmt(r.api)}`);
console.log(`median ratio krunbox CLI / msb = ${(median(r.cli) / median(r.msb)).toFixed(2)} (goal <= 0.5)`);
console.log(`median ratio krunbox API / msb = ${(median(r.api) / median(r.msb)).toFixed(2)}`);
