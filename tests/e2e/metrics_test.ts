/**
 * Metrics against workloads that move them, in a real VM with a disk-image
 * root (so guest writes reach a virtio-blk disk) and the default network
 * (netd), downloading from a test internet host in a network namespace.
 */

import { skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { InvalidConfigError, NotRunningError, Sandbox, type SandboxMetrics } from "../../mod.ts";
import { netnsSkipReason, NS_HOST, TestInternet } from "../util/netns.ts";

const ignore = skipVmReason !== undefined;
let sb: Sandbox | undefined;
let disk = "";

async function sandbox(): Promise<Sandbox> {
  if (sb) return sb;
  const root = await busyboxRoot();
  disk = `${await Deno.makeTempDir()}/root.ext4`;
  const mk = await new Deno.Command("mkfs.ext4", {
    args: ["-q", "-F", "-d", root, "-E", "lazy_itable_init=1,lazy_journal_init=1", disk, "512M"],
  }).output();
  assert(mk.success, new TextDecoder().decode(mk.stderr));
  sb = await Sandbox.builder("metrics").image(disk).cpus(2).memory(256).create();
  return sb;
}

Deno.test.afterAll(async () => {
  await sb?.[Symbol.asyncDispose]();
  await Sandbox.remove("metrics").catch(() => {});
  if (disk) await Deno.remove(disk).catch(() => {});
});

Deno.test({ name: "cpuPercent: near 100 per busy vCPU, near 0 when idle", ignore }, async () => {
  const s = await sandbox();
  await s.metrics();
  await new Promise((r) => setTimeout(r, 1000));
  const idle = await s.metrics();
  assert(idle.cpuPercent < 30, `idle guest at ${idle.cpuPercent.toFixed(1)}%`);
  const burn = s.shell("timeout 3 sh -c 'while :; do :; done'").catch(() => {});
  await new Promise((r) => setTimeout(r, 500));
  await s.metrics();
  await new Promise((r) => setTimeout(r, 1500));
  const busy = await s.metrics();
  await burn;
  assert(busy.cpuPercent > 70 && busy.cpuPercent <= 200, `one busy vCPU at ${busy.cpuPercent.toFixed(1)}%`);
});

Deno.test({ name: "writing 100 MiB moves diskWriteBytes by about that much", ignore }, async () => {
  const s = await sandbox();
  const before = await s.metrics();
  assertEquals((await s.shell("dd if=/dev/zero of=/big bs=1M count=100 2>/dev/null && sync")).code, 0);
  const after = await s.metrics();
  const moved = after.diskWriteBytes - before.diskWriteBytes;
  assert(moved >= 95 * 1048576 && moved < 160 * 1048576, `diskWriteBytes moved by ${moved}`);
  await s.shell("rm /big");
});

Deno.test({
  name: "downloading from the test internet moves netRxBytes (netd's count)",
  ignore: ignore || netnsSkipReason !== undefined,
}, async () => {
  const s = await sandbox();
  await using _inet = await TestInternet.create({});
  const size = 8 << 20;
  const before = await s.metrics();
  // busybox nc with a hand-written request (its wget segfaults here); the count includes the response headers.
  const got = await s.shell(`printf 'GET /bytes/${size} HTTP/1.0\\r\\n\\r\\n' | nc ${NS_HOST} 80 | wc -c`);
  const bytes = Number(got.stdout.trim());
  assert(bytes > size && bytes < size + 1024, `downloaded ${got.stdout.trim()} bytes`);
  const after = await s.metrics();
  const moved = after.netRxBytes - before.netRxBytes;
  assert(moved >= size && moved < size * 1.2, `netRxBytes moved by ${moved}`);
});

Deno.test({ name: "metricsStream: first sample at once, then one per interval without drift", ignore }, async () => {
  const s = await sandbox();
  const times: number[] = [];
  const t0 = performance.now();
  for await (const m of s.metricsStream(200)) {
    times.push(performance.now() - t0);
    assert(m.timestamp instanceof Date);
    if (times.length === 10) break;
  }
  assert(times[0] < 200, `first sample after ${times[0].toFixed(0)} ms`);
  const span = times[9] - times[0];
  assert(Math.abs(span - 1800) < 360, `10 samples spanned ${span.toFixed(0)} ms (expected 1800 ± 20%)`);
});

Deno.test({ name: "metricsStream rejects bad intervals and ends when aborted", ignore }, async () => {
  const s = await sandbox();
  for (const bad of [0, -5, NaN]) {
    await assertRejects(async () => {
      for await (const _ of s.metricsStream(bad)) break;
    }, InvalidConfigError);
  }
  const ac = new AbortController();
  const seen: SandboxMetrics[] = [];
  for await (const m of s.metricsStream(100, { signal: ac.signal })) {
    seen.push(m);
    if (seen.length === 2) ac.abort();
  }
  assertEquals(seen.length, 2);
});

Deno.test(
  { name: "metricsStream ends when the sandbox stops; metrics of a stopped sandbox is NotRunning", ignore },
  async () => {
    const root = await busyboxRoot();
    const s2 = await Sandbox.builder("metrics-end").image(root).memory(256).create();
    let n = 0;
    const consumed = (async () => {
      for await (const _ of s2.metricsStream(100)) n++;
    })();
    await new Promise((r) => setTimeout(r, 500));
    await s2.stop();
    await consumed;
    assert(n >= 2);
    await assertRejects(() => s2.metrics(), NotRunningError);
    await Sandbox.remove("metrics-end");
  },
);
