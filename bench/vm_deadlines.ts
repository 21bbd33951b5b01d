/**
 * How late a sandbox stops after its deadline, in a real VM (qemu here): the
 * precision the e2e lifecycle test should only bound loosely. Idle timeout
 * (2 s after the last call) and max duration (4 s after create), `runs`
 * times each; the figures are the median and worst lateness. Target: under
 * 1 s late.
 *
 *   deno run -A bench/vm_deadlines.ts [runs=5]
 */

import { busyboxRoot } from "../scripts/roots.ts";
import { Sandbox } from "../mod.ts";
import { median } from "./stats.ts";

const runs = Math.max(1, Number(Deno.args[0] ?? 5));
const root = await busyboxRoot();

async function idleLate(i: number): Promise<number> {
  const sb = await Sandbox.builder(`bench-idle-${i}`).image(root).memory(256).idleTimeout(2).replace().create();
  await sb.exec("true");
  const last = performance.now();
  await sb.wait();
  const late = performance.now() - last - 2000;
  await Sandbox.remove(sb.name);
  return late;
}

/** Lateness of the max-duration stop counted from create()'s return, and from its call (boot included). */
async function maxLate(i: number): Promise<{ fromReady: number; fromCreate: number }> {
  const t0 = performance.now();
  const sb = await Sandbox.builder(`bench-max-${i}`).image(root).memory(256).maxDuration(4).replace().create();
  const ready = performance.now();
  sb.shell("sleep 60").catch(() => {});
  await sb.wait();
  const end = performance.now();
  await Sandbox.remove(sb.name);
  return { fromReady: end - ready - 4000, fromCreate: end - t0 - 4000 };
}

const fmt = (xs: number[]) =>
  `median ${median(xs).toFixed(0)} ms, worst ${Math.max(...xs).toFixed(0)} ms (${
    xs.map((x) => x.toFixed(0)).join(", ")
  })`;
const idle: number[] = [];
const fromReady: number[] = [];
const fromCreate: number[] = [];
for (let i = 0; i < runs; i++) {
  idle.push(await idleLate(i));
  const m = await maxLate(i);
  fromReady.push(m.fromReady);
  fromCreate.push(m.fromCreate);
}
console.log(`idle timeout 2 s, stop after the deadline: ${fmt(idle)} (target < 1000 ms)`);
console.log(`max duration 4 s, stop after the deadline counted from create()'s return: ${fmt(fromReady)}`);
console.log(`  … counted from create()'s call (boot included): ${fmt(fromCreate)}`);
