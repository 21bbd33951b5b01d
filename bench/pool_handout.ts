/**
 * Warm pool handout against a cold boot (issue 18): time from `create()` to
 * the first exec's result (`true`), same image (the busybox directory root)
 * and shape (1 vCPU, 256 MiB), runs alternating in one process so both see
 * the same machine load. A handout is timed only once the pool has one
 * ready (the refill between runs is not part of it); its `create()` alone is
 * shown too, and the same with `refillDelayMs: 0` (the refill boot starts
 * while the caller's first exec runs). Goal: handout ≤ 20 ms.
 *
 *   deno run -A bench/pool_handout.ts [runs=5]
 */

import { busyboxRoot } from "../scripts/roots.ts";
import { Sandbox } from "../mod.ts";
import { median } from "./stats.ts";

const runs = Number(Deno.args[0] ?? 5);
const root = await busyboxRoot();
Deno.env.set("KRUNBOX_BACKEND", "qemu");
const shape = (name: string) => Sandbox.builder(name).image(root).memory(256).replace();

async function timed(name: string): Promise<{ total: number; create: number }> {
  const t0 = performance.now();
  const sb = await shape(name).create();
  const t1 = performance.now();
  await sb.exec("true");
  const total = performance.now() - t0;
  await sb.kill();
  await Sandbox.remove(name);
  return { total, create: t1 - t0 };
}

const cold: number[] = [];
const hand: number[] = [];
const handCreate: number[] = [];
/** With `refillDelayMs: 0`: the refill boot starts as the handout returns. */
const handNow: number[] = [];
const handNowCreate: number[] = [];
await timed("bench-pool-warmup"); // page cache of kernel, initramfs and root
{
  // Cold boots first, with no pool in the process (a pool would serve them).
  for (let i = 0; i < runs; i++) cold.push((await timed(`bench-cold-${i}`)).total);
  for (const [delay, total, create] of [[0, handNow, handNowCreate], [undefined, hand, handCreate]] as const) {
    await using pool = Sandbox.pool({ image: root, memory: 256, size: 1, refillDelayMs: delay });
    for (let i = 0; i < runs; i++) {
      await pool.ready();
      // Settled: the refill's boot is over, its VM idle (as a pool's sandbox waits for its create).
      await new Promise((r) => setTimeout(r, 1000));
      const r = await timed(`bench-pooled-${i}`);
      total.push(r.total);
      create.push(r.create);
    }
    if (pool.stats.handedOut !== runs) throw new Error(`only ${pool.stats.handedOut} of ${runs} runs were handouts`);
  }
}
// The floor under both: an exec of `true` in a running, warm sandbox.
const floor: number[] = [];
{
  await using sb = await shape("bench-floor").create();
  for (let i = 0; i < 3; i++) await sb.exec("true");
  for (let i = 0; i < runs; i++) {
    await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    await sb.exec("true");
    floor.push(performance.now() - t0);
  }
  await sb.kill();
  await Sandbox.remove(sb.name);
}
const list = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(", ");
console.log(`cold create → first exec:         median ${median(cold).toFixed(0)} ms  (${list(cold)})`);
console.log(`pool handout create → first exec: median ${median(hand).toFixed(1)} ms  (${list(hand)})`);
console.log(`  of which create() (the handout): median ${median(handCreate).toFixed(1)} ms  (${list(handCreate)})`);
console.log(`pool handout, refill at once:      median ${median(handNow).toFixed(1)} ms  (${list(handNow)})`);
console.log(
  `  of which create() (the handout): median ${median(handNowCreate).toFixed(1)} ms  (${list(handNowCreate)})`,
);
console.log(`floor: exec of true, warm sandbox: median ${median(floor).toFixed(1)} ms  (${list(floor)})`);
console.log(`load average at the end: ${Deno.loadavg().map((x) => x.toFixed(1)).join(" ")} (2 cores shared)`);
console.log(`goal: handout ≤ 20 ms: ${median(hand) <= 20 ? "met" : "not met"}`);
