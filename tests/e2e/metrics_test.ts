/**
 * Metrics against workloads that move them, in a real VM with a disk-image
 * root (so guest writes reach a virtio-blk disk) and the default network
 * (netd), downloading from a test internet host in a network namespace.
 * Each figure is checked against what the guest or the host really did, not
 * against the configuration it echoes; bounds stay far (5× or more) from the
 * measured values, and the precise figures are bench/vm_metrics.ts's.
 */

import { skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { guestResources } from "../util/guest.ts";
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

Deno.test({ name: "the guest sees the configured vCPUs and about the configured memory", ignore }, async () => {
  const s = await sandbox();
  const guest = await guestResources(s);
  assertEquals(guest.cpus, 2, "processors in the guest's /proc/cpuinfo");
  const mib = guest.memTotalBytes / 1048576;
  // The kernel keeps some of the 256 MiB for itself (about 20 MiB here): MemTotal is a little under.
  assert(mib > 0.75 * 256 && mib <= 256, `guest MemTotal ${mib.toFixed(0)} MiB for a 256 MiB sandbox`);
  const m = await s.metrics();
  assertEquals(m.memoryLimitBytes, 256 * 1048576);
  assert(m.memoryBytes <= guest.memTotalBytes, `memoryBytes ${m.memoryBytes} above the guest's MemTotal`);
});

Deno.test(
  { name: "memoryBytes follows what the guest really holds (64 MiB in tmpfs, then freed)", ignore },
  async () => {
    const s = await sandbox();
    const before = await s.metrics();
    assertEquals((await s.shell("dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null")).code, 0);
    const full = await s.metrics();
    const guest = await guestResources(s);
    const grew = (full.memoryBytes - before.memoryBytes) / 1048576;
    assert(grew > 48 && grew < 128, `memoryBytes grew by ${grew.toFixed(1)} MiB for 64 MiB held in tmpfs`);
    // the metric is the guest kernel's own MemTotal - MemAvailable (read a moment apart)
    const own = (guest.memTotalBytes - guest.memAvailableBytes) / 1048576;
    assert(Math.abs(own - full.memoryBytes / 1048576) < 16, `metric ${full.memoryBytes} vs the guest's ${own} MiB`);
    await s.shell("rm /dev/shm/fill");
    const freed = await s.metrics();
    assert(full.memoryBytes - freed.memoryBytes > 48 * 1048576, "freeing the 64 MiB shows");
  },
);

Deno.test({ name: "cpuPercent rises with two busy guest loops and falls back when they stop", ignore }, async () => {
  const s = await sandbox();
  const sample = async (ms: number) => {
    await s.metrics();
    await new Promise((r) => setTimeout(r, ms));
    return (await s.metrics()).cpuPercent;
  };
  const idle = await sample(1000);
  const burn = s.shell("for i in 1 2; do timeout 4 sh -c 'while :; do :; done' & done; wait").catch(() => {});
  await new Promise((r) => setTimeout(r, 500));
  const busy = await sample(2000);
  await burn;
  const after = await sample(1000);
  // Measured here (bench/vm_metrics.ts, 5 runs each): idle 1-5 %; two busy loops 44-91 % (median 69 %, not 200:
  // the host's 2 cores are shared). The bounds stay 5x away from those; the precise figures are the bench's.
  assert(idle < 25, `idle guest at ${idle.toFixed(1)}%`);
  assert(busy > 8, `two busy vCPUs at only ${busy.toFixed(1)}% (idle ${idle.toFixed(1)}%)`);
  assert(after < 25, `still at ${after.toFixed(1)}% after the loops ended`);
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
  // busybox nc with a hand-written request (its HTTP client segfaults here); the count includes the headers.
  const got = await s.shell(`printf 'GET /bytes/${size} HTTP/1.0\\r\\n\\r\\n' | nc ${NS_HOST} 80 | wc -c`);
  const bytes = Number(got.stdout.trim());
  assert(bytes > size && bytes < size + 1024, `downloaded ${got.stdout.trim()} bytes`);
  const after = await s.metrics();
  const moved = after.netRxBytes - before.netRxBytes;
  assert(moved >= size && moved < size * 1.2, `netRxBytes moved by ${moved}`);
  // A port nothing listens on, same client: nothing arrives and netRxBytes barely moves.
  const quiet = await s.metrics();
  const none = await s.shell(`printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc ${NS_HOST} 81 | wc -c`);
  assertEquals(none.stdout.trim(), "0");
  assert((await s.metrics()).netRxBytes - quiet.netRxBytes < 64 * 1024, "no download, no bytes");
});

Deno.test({
  name: "metricsStream: the first sample comes before one interval has passed, then one per interval",
  ignore,
}, async () => {
  const s = await sandbox();
  const times: number[] = [];
  const stamps: number[] = [];
  const t0 = performance.now();
  for await (const m of s.metricsStream(1000)) {
    times.push(performance.now() - t0);
    stamps.push(m.timestamp.getTime());
    if (times.length === 4) break;
  }
  // Loose on purpose: the first sample's latency and the drift are measured by bench/vm_metrics.ts.
  assert(times[0] < 1000, `first sample after ${times[0].toFixed(0)} ms: it waited for an interval`);
  const span = times[3] - times[0];
  assert(span > 1500 && span < 15_000, `3 intervals of 1000 ms spanned ${span.toFixed(0)} ms`);
  assert(stamps.every((t, i) => i === 0 || t > stamps[i - 1]), "timestamps increase");
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
