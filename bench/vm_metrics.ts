/**
 * The precision of metrics in a real VM (qemu here), the figures the e2e
 * tests only bound loosely (tests/e2e/metrics_test.ts): cpuPercent idle, with
 * one and with two busy vCPUs (target: near 0, near 100, near 200), and how
 * soon `metricsStream` gives its first sample and how far `metricsStream(200)`
 * drifts from its interval over 25 samples (target: under 5 %). Each figure
 * is the median of `runs` samples.
 *
 *   deno run -A bench/vm_metrics.ts [runs=5]
 */

import { busyboxRoot } from "../scripts/roots.ts";
import { Sandbox } from "../mod.ts";
import { median } from "./stats.ts";

const runs = Math.max(1, Number(Deno.args[0] ?? 5));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

await using sb = await Sandbox.builder("bench-metrics").image(await busyboxRoot()).cpus(2).memory(256).replace()
  .create();

async function cpuDuring(loops: number): Promise<number> {
  const burn = loops === 0
    ? Promise.resolve()
    : sb.shell(`for i in $(seq ${loops}); do timeout 3 sh -c 'while :; do :; done' & done; wait`).catch(() => {});
  await sleep(500);
  await sb.metrics();
  await sleep(2000);
  const m = await sb.metrics();
  await burn;
  await sleep(300);
  return m.cpuPercent;
}

for (const loops of [0, 1, 2]) {
  const xs: number[] = [];
  for (let i = 0; i < runs; i++) xs.push(await cpuDuring(loops));
  console.log(
    `cpuPercent with ${loops} busy loop(s) on 2 vCPUs: median ${median(xs).toFixed(1)} % ` +
      `(target ~${loops * 100}); runs ${xs.map((x) => x.toFixed(0)).join(", ")}`,
  );
}

const drifts: number[] = [];
const firsts: number[] = [];
for (let i = 0; i < runs; i++) {
  const times: number[] = [];
  const t0 = performance.now();
  for await (const _ of sb.metricsStream(200)) {
    times.push(performance.now());
    if (times.length === 25) break;
  }
  firsts.push(times[0] - t0);
  drifts.push(((times[24] - times[0]) / (24 * 200) - 1) * 100);
}
console.log(
  `metricsStream: first sample after a median ${median(firsts).toFixed(0)} ms (target: at once, well under ` +
    `one interval); runs ${firsts.map((f) => f.toFixed(0)).join(", ")}`,
);
console.log(
  `metricsStream(200) over 24 intervals: median drift ${median(drifts).toFixed(2)} % (target |drift| < 5 %); ` +
    `runs ${drifts.map((d) => d.toFixed(1)).join(", ")}`,
);
