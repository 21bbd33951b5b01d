/**
 * In a real VM (qemu here): exec round-trip of `true` (p50/p95), one
 * `metrics()` call (p50; target < 5 ms), and fs write/read throughput of a
 * 256 MiB file through the agent channel (to the guest's tmpfs, so the
 * channel is measured, not a disk).
 *
 *   deno run -A bench/vm_exec_fs.ts [execs=200]
 */

import { busyboxRoot } from "../scripts/roots.ts";
import { Sandbox } from "../mod.ts";
import { repeatedChunks } from "../tests/util/streams.ts";

const n = Number(Deno.args[0] ?? 200);
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];

await using sb = await Sandbox.builder("bench-vm").image(await busyboxRoot()).memory(1024).replace().create();
await sb.exec("true"); // warm the path and the guest's page cache

const execs: number[] = [];
for (let i = 0; i < n; i++) {
  const t0 = performance.now();
  await sb.exec("true");
  execs.push(performance.now() - t0);
}
console.log(`exec true (VM): p50 ${pct(execs, 0.5).toFixed(2)} ms, p95 ${pct(execs, 0.95).toFixed(2)} ms over ${n}`);

await sb.metrics();
const samples: number[] = [];
for (let i = 0; i < 100; i++) {
  const t0 = performance.now();
  await sb.metrics();
  samples.push(performance.now() - t0);
}
console.log(
  `metrics() (VM): p50 ${pct(samples, 0.5).toFixed(2)} ms, p95 ${pct(samples, 0.95).toFixed(2)} ms (target p50 < 5 ms)`,
);

const SIZE = 256 << 20;
const chunk = new Uint8Array(1 << 20).map((_, i) => i);
for (let round = 0; round < 3; round++) {
  let t0 = performance.now();
  await repeatedChunks(chunk, SIZE).pipeTo(sb.fs().writeStream("/tmp/big"));
  const writeMBs = SIZE / 1e6 / ((performance.now() - t0) / 1000);
  t0 = performance.now();
  let got = 0;
  for await (const c of sb.fs().readStream("/tmp/big")) got += c.length;
  if (got !== SIZE) throw new Error(`read ${got} bytes`);
  const readMBs = SIZE / 1e6 / ((performance.now() - t0) / 1000);
  console.log(
    `fs 256 MiB (VM), round ${round + 1}: write ${writeMBs.toFixed(0)} MB/s, read ${readMBs.toFixed(0)} MB/s`,
  );
}
await sb.fs().remove("/tmp/big");
await sb.stopAndWait();
await Sandbox.remove("bench-vm");
