/**
 * Boot phase timing on a real qemu boot: `Sandbox.bootPhases` is present,
 * contiguous, adds up to the measured wall time of create() and start(),
 * and places the VMM's exec and the guest kernel's start where the host's
 * and the guest's own clocks put them. The runner logs one line per boot.
 */

import { processesMentioning, sandboxDir, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { assetPath } from "../../src/store/assets.ts";
import { type BootPhase, Sandbox } from "../../mod.ts";
import { statFields } from "../../src/util/proc.ts";

const ignore = skipVmReason !== undefined;
const root = ignore ? "" : await busyboxRoot();

/** The host's and runner's phases in order; `guest.*` stands for the guest's (kernel, then the agent's steps). */
const EXPECTED = [
  "host.prepare",
  "runner.start",
  "runner.load",
  "runner.prepare",
  "vmm.prepare",
  "vmm.helpers",
  "vmm.start",
  "guest.*",
  "runner.ready",
  "host.connect",
  "host.finish",
];
/** The agent's steps this agent reports (agent/PROTOCOL.md, `ready`). */
const GUEST = [
  "guest.kernel",
  "guest.transport",
  "guest.config",
  "guest.modules",
  "guest.root",
  "guest.setup",
  "guest.ready",
];

function phase(phases: readonly BootPhase[], name: string): BootPhase {
  const p = phases.find((x) => x.name === name);
  assert(p, `no phase ${name} in ${JSON.stringify(phases)}`);
  return p;
}

/**
 * How late this process's timers ran while `fn` ran (the worst overshoot of
 * a 5 ms interval): the allowance a loaded machine adds to the clock bounds
 * below, so they stay tight on an idle one and honest on a busy one.
 */
async function withLag<T>(fn: () => Promise<T>): Promise<{ value: T; lagMs: number }> {
  let last = performance.now();
  let lagMs = 0;
  const probe = setInterval(() => {
    const now = performance.now();
    lagMs = Math.max(lagMs, now - last - 5);
    last = now;
  }, 5);
  try {
    return { value: await fn(), lagMs };
  } finally {
    clearInterval(probe);
  }
}

/** Contiguous from 0, each non-negative, adding up to `wallMs` (measured around the call) within a few ms. */
function checkPhases(phases: readonly BootPhase[], wallMs: number, lagMs: number): void {
  const names = phases.map((p) => p.name);
  assertEquals(names.filter((n) => n.startsWith("guest.")), GUEST);
  assertEquals([...new Set(names.map((n) => n.startsWith("guest.") ? "guest.*" : n))], EXPECTED);
  let at = 0;
  for (const p of phases) {
    assert(Math.abs(p.startMs - at) < 0.15, `${p.name} starts at ${p.startMs}, the previous ended at ${at}`);
    assert(p.durationMs >= 0, `${p.name}: ${p.durationMs} ms`);
    at = p.startMs + p.durationMs;
  }
  // The call's own first and last microseconds are outside its clock: a few ms at most.
  assert(
    at <= wallMs + 0.5 && wallMs - at < 15 + lagMs,
    `phases add up to ${at} ms, create() took ${wallMs} ms (timers ran up to ${lagMs.toFixed(1)} ms late)`,
  );
  // Real work in each boot step that must take time on any machine.
  for (const name of ["runner.start", "vmm.start", "guest.kernel", "guest.config", "guest.root"]) {
    assert(phase(phases, name).durationMs > 1, `${name} took ${phase(phases, name).durationMs} ms`);
  }
}

/** The host's wall clock at the kernel's idea of a process's start (10 ms ticks). */
async function processStartEpochMs(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const startTicks = Number(statFields(stat)[19]);
  const uptimeS = Number((await Deno.readTextFile("/proc/uptime")).split(" ")[0]);
  return Date.now() - uptimeS * 1000 + startTicks * 10;
}

Deno.test({ name: "bootPhases of create() and start(): contiguous, adding up, placed right", ignore }, async () => {
  const name = "phases";
  const t0 = performance.now();
  const { value: sb, lagMs } = await withLag(() => Sandbox.builder(name).image(root).memory(256).replace().create());
  const wallMs = performance.now() - t0;
  const createdAt = Date.now() - wallMs;
  try {
    const phases = sb.bootPhases;
    checkPhases(phases, wallMs, lagMs);

    // The guest's own clock: its uptime now says when its kernel started, which the phases
    // derived from the agent's ready message (a few exec round trips and 10 ms ticks apart).
    const before = Date.now();
    const uptime = Number((await sb.exec("cat", ["/proc/uptime"])).stdout.split(" ")[0]) * 1000;
    const roundTrip = Date.now() - before;
    const kernelStartByGuest = (before + roundTrip / 2) - uptime;
    const kernelStartByPhases = createdAt + phase(phases, "guest.kernel").startMs;
    // The uptime was read somewhere inside the exec's round trip: half of it is the estimate's own error.
    assert(
      Math.abs(kernelStartByGuest - kernelStartByPhases) < 150 + roundTrip / 2,
      `guest kernel start: ${kernelStartByGuest - createdAt} ms by the guest, ${
        kernelStartByPhases - createdAt
      } by the phases`,
    );

    // The host's clock: qemu's process start is where vmm.start begins.
    const vmmPid = processesMentioning(sandboxDir(name)).find((pid) =>
      Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0")[0].endsWith("qemu-system-x86_64")
    );
    assert(vmmPid, "no qemu process of the sandbox");
    const qemuStart = await processStartEpochMs(vmmPid);
    const vmmStartByPhases = createdAt + phase(phases, "vmm.start").startMs;
    assert(
      Math.abs(qemuStart - vmmStartByPhases) < 60 + lagMs,
      `qemu started at ${qemuStart - createdAt} ms, vmm.start begins at ${vmmStartByPhases - createdAt} ms`,
    );

    await sb.stop();
    const t1 = performance.now();
    const { value: again, lagMs: startLag } = await withLag(() => Sandbox.start(name));
    const startWall = performance.now() - t1;
    checkPhases(again.bootPhases, startWall, startLag);
    await again.stop();

    const log = await Deno.readTextFile(`${sandboxDir(name)}/runner.log`);
    const lines = log.split("\n").filter((l) => l.includes("boot phases: "));
    assertEquals(lines.length, 2, log);
    assert(/runner\.start \d+ ms, .*guest\.\w+ \d+ ms, runner\.ready \d+ ms; total \d+ ms/.test(lines[0]), lines[0]);
  } finally {
    await sb.kill().catch(() => {});
    await Sandbox.remove(name).catch(() => {});
  }
});

Deno.test({
  name: "every qemu boot uses the shared initramfs as it is; the guest asks the host for its config",
  ignore,
}, async () => {
  const name = "shared-initrd";
  const initramfs = assetPath("initramfs");
  const before = await Deno.stat(initramfs);
  const sb = await Sandbox.builder(name).image(root).memory(256).env("FROM_HOST", "yes").replace().create();
  try {
    // The sandbox's own settings reached the guest without being in any archive.
    assertEquals((await sb.exec("hostname")).stdout.trim(), name);
    assertEquals((await sb.shell("echo $FROM_HOST")).stdout.trim(), "yes");
    const qemu = processesMentioning(sandboxDir(name)).map((pid) =>
      Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0")
    ).find((argv) => argv[0].endsWith("qemu-system-x86_64"));
    assert(qemu, "no qemu process of the sandbox");
    assertEquals(qemu[qemu.indexOf("-initrd") + 1], initramfs);
    const files = [...Deno.readDirSync(sandboxDir(name))].map((e) => e.name);
    assert(!files.some((f) => f.includes("initrd")), files.join(" "));
    const console = await Deno.readTextFile(`${sandboxDir(name)}/console.log`);
    assert(console.includes("boot config from the host"), console);
    const after = await Deno.stat(initramfs);
    assertEquals([after.size, after.mtime?.getTime()], [before.size, before.mtime?.getTime()]);
  } finally {
    await sb.kill().catch(() => {});
    await Sandbox.remove(name).catch(() => {});
  }
});
