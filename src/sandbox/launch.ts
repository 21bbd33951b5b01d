/**
 * Starting and ending a sandbox's runner: the one boot path shared by
 * create and start (root → config → VM spec → stored row → runner), the
 * runner process itself (its ready line, its stdio), and killing it.
 *
 * A runner keeps nothing of its starter's: its stderr goes to the
 * sandbox's `runner.log`, its stdout is a pipe the starter reads only for the
 * ready line, and no other descriptor is inherited, so a caller capturing
 * the starter's output (a shell's `$(…)`, `Deno.Command#output()`) is not
 * held open by a detached sandbox.
 *
 * @module
 */

import { doctorCommand } from "../setup_command.ts";
import { AgentClient } from "../agent/client.ts";
import {
  AlreadyExistsError,
  BackendUnavailableError,
  BootTimeoutError,
  errorFromWire,
  KrunboxError,
  StateError,
  StillRunningError,
  VmCrashedError,
} from "../errors.ts";
import type { PullOptions } from "../image/pull.ts";
import type { SandboxRow, Store, StoredStatus } from "../store/db.ts";
import { homeLayout } from "../store/home.ts";
import { isLocked } from "../store/lock.ts";
import { openStore } from "../store/open.ts";
import { privateDir, touchPrivate, writePrivate } from "../store/private.ts";
import { type SandboxPaths, sandboxPaths, type VmSpec } from "../vmm/backend.ts";
import { bwrapArgs, containHost, denoCacheDir, withContainFds } from "../vmm/contain.ts";
import { warmRunnerCache } from "../vmm/runner_cache.ts";
import { checkBwrap, checkedPrograms } from "../vmm/prereqs.ts";
import { shareFilter } from "../vmm/seccomp.ts";
import type { RunnerEvent } from "../vmm/runner.ts";
import { logTail } from "../util/logs.ts";
import { PhaseClock } from "../util/phases.ts";
import { readBounded, removeEntry } from "../util/nofollow.ts";
import { DEFAULTS, settings } from "../settings.ts";
import { parseConfig, type SandboxConfig } from "./config.ts";
import { prepareRoot, vmSpecOf, withImageDefaults } from "./spec.ts";
import { deleteState, isLive, pathsOf, reconcile, requireRow, withNameLock } from "./state.ts";
import { type SecretConfig, secretValues } from "../net/secrets.ts";
import { runnerSecretsLine } from "../vmm/runner_secrets.ts";

/** A launched runner: its ready event and a client connected to its relay. */
export interface Launched {
  /** A client connected to the runner's relay. */
  readonly agent: AgentClient;
  /** The runner process (attached launches keep its stdin: the lifeline). */
  readonly runner: Deno.ChildProcess;
  /** The runner's ready line. */
  readonly ready: Extract<RunnerEvent, { event: "ready" }>;
  /**
   * The boot's phases so far: the caller's `host.prepare`, the runner's
   * (from its ready line) and `host.connect`; the caller may mark more.
   */
  readonly clock: PhaseClock;
}

/** A booted sandbox: its runner and the config it runs (with the image's defaults). */
export interface Booted {
  /** The runner, ready. */
  readonly launched: Launched;
  /** The config as stored. */
  readonly config: SandboxConfig;
}

/**
 * Creates the stored sandbox and its directory, then boots it. With
 * `replace`, an existing sandbox of that name is killed and removed first.
 * Anything that fails leaves no trace of the new sandbox. `values` are the
 * secrets' values (env name → value, memory only): they go to the runner's
 * stdin and from there to netd's, never to a file.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; every e2e test that creates a sandbox (e.g. tests/e2e/lifecycle_test.ts) runs this path.
 * import { createAndLaunch } from "./launch.ts";
 * import { parseConfig } from "./config.ts";
 * const { launched } = await createAndLaunch(parseConfig({ name: "a", image: { kind: "dir", path: "/srv/root" } }), false, false);
 * await launched.agent.request("runner.stop", {});
 * ```
 */
export async function createAndLaunch(
  requested: SandboxConfig,
  detached: boolean,
  replace: boolean,
  pull: PullOptions = {},
  clock: PhaseClock = new PhaseClock(),
  values?: ReadonlyMap<string, string>,
): Promise<Booted> {
  // Every secret needs its value: refused before anything is touched.
  secretValues(requested.name, requested.secrets, values);
  using store = await openStore();
  return await withNameLock(requested.name, async () => {
    await clearName(store, requested.name, replace);
    // 0700: the only boundary of the sockets the runner, libkrun and virtiofsd make in it (agent.sock, vm.sock,
    // net.sock, fs-*.sock). Deno cannot read SO_PEERCRED of an accepted unix connection (no fd access), so
    // no peer-uid check is possible there: no other uid may reach this directory.
    await privateDir(pathsOf(requested.name).dir);
    try {
      return await boot(store, requested, { fresh: true, detached, pull, clock, values });
    } catch (e) {
      await deleteState(store, requested.name).catch(() => {});
      throw e;
    }
  });
}

/**
 * Makes `name` free for a new sandbox, under its name lock: an existing
 * sandbox of that name is an {@link AlreadyExistsError}, or with `replace`
 * is killed and removed.
 *
 * @example
 * ```ts
 * import { clearName } from "./launch.ts";
 * import { withNameLock } from "./state.ts";
 * import { openStore } from "../store/open.ts";
 * using store = await openStore();
 * await withNameLock("free-name", () => clearName(store, "free-name", false)); // nothing there: no error
 * ```
 */
export async function clearName(store: Store, name: string, replace: boolean): Promise<void> {
  const existing = store.get(name);
  if (!existing) return;
  if (!replace) throw new AlreadyExistsError("sandbox", name);
  await killRunner(store, existing);
  await deleteState(store, name);
}

/**
 * Boots a stopped (or crashed) sandbox from its persisted config.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/api_lifecycle_test.ts ("start a stopped sandbox: …") relaunches the same way.
 * import { relaunch } from "./launch.ts";
 * const { launched } = await relaunch("job-1", true);
 * console.log(launched.ready.vmmPid);
 * ```
 */
export async function relaunch(name: string, detached: boolean, clock: PhaseClock = new PhaseClock()): Promise<Booted> {
  using store = await openStore();
  return await withNameLock(name, async () => {
    const row = requireRow(store, name);
    if (isLive(reconcile(store, row))) throw new StillRunningError(name);
    const config = parseConfig(JSON.parse(row.config));
    // Secret values are never stored: without them the sandbox cannot start (it stays as it was).
    secretValues(name, config.secrets, undefined);
    return await boot(store, config, { fresh: false, detached, pull: { policy: "if-missing" }, clock });
  });
}

/** How {@link boot} runs: for a new sandbox (create) or a stored one (start). */
interface BootPlan {
  /** True at create: the image's defaults join the config, and the row is inserted. */
  readonly fresh: boolean;
  readonly detached: boolean;
  readonly pull: PullOptions;
  /** Times the boot from the caller's create() or start(). */
  readonly clock: PhaseClock;
  /** The secrets' values (memory only); absent at start, where {@link relaunch} refuses secrets. */
  readonly values?: ReadonlyMap<string, string>;
}

/**
 * The one boot sequence, under the name lock: root, config, VM spec,
 * stored row, runner. A fresh sandbox's caller deletes everything on
 * failure; a stored one is marked crashed when its runner fails to start.
 */
async function boot(store: Store, requested: SandboxConfig, plan: BootPlan): Promise<Booted> {
  const name = requested.name;
  const paths = pathsOf(name);
  const { root, image } = await prepareRoot(store, requested, paths, plan.pull);
  const config = plan.fresh && image ? withImageDefaults(requested, image.config) : requested;
  // A first boot may be restored from a snapshot template (src/vmm/template.ts); a restart boots its own disk.
  const spec = {
    ...await vmSpecOf(config, root),
    firstBoot: plan.fresh,
    fromSnapshot: plan.fresh ? config.fromSnapshot : undefined,
  };
  // Made anew, never through a link (src/util/nofollow.ts): the directory was writable by a runner that served a guest.
  await writePrivate(paths.vmSpec, JSON.stringify(spec, null, 1));
  // The logs exist 0600 before the runner and qemu append to them (they would create them with the umask's mode), and
  // are regular files of ours: the runner's stderr is appended to runner.log by the starting shell, as the host.
  for (const log of [paths.consoleLog, paths.runnerLog]) await touchPrivate(log);
  // The last boot's report is not this one's (a reader would merge it: src/sandbox/state.ts).
  removeEntry(paths.statusFile);
  if (plan.fresh) {
    if (!store.insert(name, JSON.stringify(config), "creating", plan.detached)) {
      throw new AlreadyExistsError("sandbox", name);
    }
    store.update(name, { backend: spec.backend });
    if (image) store.setSandboxImage(name, image.manifestDigest);
  } else {
    store.update(name, { status: "creating", stopReason: null, detached: plan.detached });
  }
  try {
    const values = secretValues(name, config.secrets, plan.values);
    return { launched: await launchRunner(paths, name, plan.detached, spec, plan.clock, values), config };
  } catch (e) {
    if (!plan.fresh) store.update(name, { status: "crashed", stopReason: `start failed: ${(e as Error).message}` });
    throw e;
  }
}

/**
 * The shell script that starts the runner (`"$@"`) with nothing of its
 * starter's but what it is given: stderr appended to `runner.log` (`$0`),
 * and every other inherited descriptor above 2 closed — a caller's own
 * inherited descriptors without close-on-exec (a pipe a test harness or a
 * shell's `$(…)` waits on) would otherwise stay open in the runner, and in
 * qemu and virtiofsd after it, for the sandbox's whole life. Deno's spawn
 * can only inherit, pipe or discard stdio and closes nothing else, hence a
 * shell; bash, because dash cannot name a descriptor above 9. A node IPC
 * channel the caller may have is not the runner's either.
 */
const RUNNER_EXEC = `exec 2>>"$0" || exit 70
for fd in /proc/self/fd/*; do
  fd=\${fd##*/}
  if [ "$fd" -gt 2 ] && { [ -n "$BASH_VERSION" ] || [ "$fd" -lt 10 ]; }; then eval "exec $fd>&-"; fi
done
unset NODE_CHANNEL_FD
exec "$@"`;

/** bash where it exists (every Debian system), else sh, which closes only descriptors 3–9. */
function runnerShell(): string {
  try {
    return Deno.statSync("/bin/bash").isFile ? "/bin/bash" : "/bin/sh";
  } catch {
    return "/bin/sh";
  }
}

/**
 * The libkrun runner's command under bubblewrap (src/vmm/contain.ts): the
 * share filter written for bwrap to load, this boot's info file fresh.
 */
async function contained(spec: VmSpec): Promise<(command: readonly string[]) => string[]> {
  // Resolved with the other prerequisites (vmSpecOf); a spec without it is checked here, failing typed.
  const bwrap = spec.programs?.bwrap ?? checkedPrograms("libkrun", [await checkBwrap()]).bwrap;
  const paths = sandboxPaths(spec.dir);
  // Made anew, never through a link: the directory was writable by a runner that served a guest.
  await writePrivate(paths.seccompFilter, shareFilter());
  await writePrivate(paths.containInfo, new Uint8Array());
  // The runner reads Deno's cache only: fill it first (a no-op once done for this code and Deno).
  const denoDir = denoCacheDir();
  if (denoDir) await warmRunnerCache(denoDir, new URL("../vmm/runner.ts", import.meta.url));
  const args = bwrapArgs(spec, await containHost(homeLayout()));
  return (command) => withContainFds(paths.seccompFilter, paths.containInfo, [bwrap, ...args, "--", ...command]);
}

/** The most bytes a `vm.json` may hold when the host reads it back. */
const VM_SPEC_MAX_BYTES = 1 << 20;

/** A sandbox's `vm.json`, read without following a link and bounded; a missing one is a {@link StateError}. */
function readSpec(paths: SandboxPaths): VmSpec {
  const bytes = readBounded(paths.vmSpec, VM_SPEC_MAX_BYTES);
  if (!bytes) throw new StateError(`${paths.vmSpec} is missing`);
  return JSON.parse(new TextDecoder().decode(bytes)) as VmSpec;
}

/**
 * Starts the runner of a sandbox whose `vm.json` is written, waits for its
 * ready event and connects to its relay. With secrets, their values are the
 * first line on the runner's stdin ({@link runnerSecretsLine}): a detached
 * runner's stdin closes after it, an attached one's stays open as the
 * lifeline.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; every e2e test that creates a sandbox (e.g. tests/e2e/lifecycle_test.ts) launches a runner this way.
 * import { launchRunner } from "./launch.ts";
 * import { pathsOf } from "./state.ts";
 * const { agent } = await launchRunner(pathsOf("job-1"), "job-1", false);
 * await agent.request("runner.stop", {});
 * ```
 */
export async function launchRunner(
  paths: SandboxPaths,
  name: string,
  detached: boolean,
  spec?: VmSpec,
  clock: PhaseClock = new PhaseClock(),
  secrets: readonly { secret: SecretConfig; value: string }[] = [],
): Promise<Launched> {
  const runnerUrl = new URL("../vmm/runner.ts", import.meta.url).href;
  const vm = spec ?? readSpec(paths);
  const wrap = vm.backend === "libkrun" ? await contained(vm) : (command: readonly string[]) => [...command];
  clock.mark("host.prepare");
  const spawnedAt = clock.lastMs;
  const runnerArgs = [
    "run",
    "--allow-all",
    "--no-prompt",
    runnerUrl,
    paths.dir,
    detached ? "detached" : "attached",
    String(spawnedAt),
  ];
  const runner = new Deno.Command(runnerShell(), {
    args: ["-c", RUNNER_EXEC, paths.runnerLog, ...wrap([Deno.execPath(), ...runnerArgs])],
    // Attached: stdin is the lifeline (EOF: the owner is gone). Detached: nothing of ours but the secrets' line.
    stdin: detached && secrets.length === 0 ? "null" : "piped",
    stdout: "piped",
    stderr: "null",
    detached,
    env: { KRUNBOX_HOME: homeLayout().root },
  }).spawn();
  if (secrets.length > 0) {
    const w = runner.stdin.getWriter();
    await w.write(new TextEncoder().encode(runnerSecretsLine(secrets))).catch(() => {}); // a dead runner: said below
    w.releaseLock();
    if (detached) await runner.stdin.close().catch(() => {});
  }
  const line = await firstLine(runner.stdout);
  let event: RunnerEvent | undefined;
  try {
    event = line ? JSON.parse(line) : undefined;
  } catch {
    event = undefined;
  }
  // Keep draining the runner's stdout so it never blocks on a full pipe.
  runner.stdout.pipeTo(new WritableStream()).catch(() => {});
  if (!event || event.event !== "ready") {
    const status = await Promise.race([
      runner.status,
      new Promise<undefined>((r) => setTimeout(() => r(undefined), DEFAULTS.runnerExitMs)),
    ]);
    if (!status) runner.kill("SIGKILL");
    if (event?.event === "failed") throw runnerError(event, name, settings.bootTimeoutMs());
    const tail = [await logTail(paths.runnerLog, 5), await logTail(paths.consoleLog, 10)].filter(Boolean).join("\n");
    // How it ended says what to look for: a signal (a crash in the VMM's code), or an exit code of its own.
    const how = !status
      ? "did not exit (killed)"
      : status.signal
      ? `killed by ${status.signal}`
      : `exit code ${status.code}`;
    throw new BackendUnavailableError(
      "runner",
      `the runner of "${name}" exited before the VM was ready (${how})${tail ? `; its logs end with:\n${tail}\n` : ""}`,
      `see ${paths.runnerLog} and run ${doctorCommand()}`,
    );
  }
  let agent: AgentClient;
  try {
    agent = await AgentClient.connect(paths.agentSocket, { timeoutMs: DEFAULTS.relayConnectMs });
  } catch (e) {
    runner.kill("SIGKILL");
    throw e;
  }
  clock.adopt(event.bootPhases ?? [], spawnedAt);
  clock.mark("host.connect");
  if (detached) runner.unref();
  return { agent, runner, ready: event, clock };
}

/**
 * Kills a sandbox's runner if it is alive and waits for its lock to drop.
 *
 * @example
 * ```ts ignore
 * // Needs a running sandbox; tests/e2e/api_lifecycle_test.ts ("replace() over a running sandbox, …") kills a runner this way.
 * import { killRunner } from "./launch.ts";
 * import { requireRow } from "./state.ts";
 * import { openStore } from "../store/open.ts";
 * using store = await openStore();
 * await killRunner(store, requireRow(store, "job-1"));
 * ```
 */
export async function killRunner(store: Store, row: SandboxRow): Promise<void> {
  const paths = pathsOf(row.name);
  if (!isLocked(paths.runnerLock)) return;
  try {
    await using agent = await AgentClient.connect(paths.agentSocket, { timeoutMs: DEFAULTS.killConnectMs });
    await agent.request("runner.kill", {}).catch(() => {});
  } catch {
    // the relay is not answering: nothing more we can do politely
  }
  const end = Date.now() + DEFAULTS.killWaitMs;
  while (isLocked(paths.runnerLock) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  if (isLocked(paths.runnerLock)) throw new StillRunningError(row.name);
  const fresh = store.get(row.name);
  if (fresh && (fresh.status as StoredStatus) !== "stopped") reconcile(store, fresh);
}

function runnerError(e: Extract<RunnerEvent, { event: "failed" }>, name: string, timeoutMs: number): KrunboxError {
  if (e.error) return errorFromWire(e.error);
  switch (e.code) {
    case "BOOT_TIMEOUT":
      return new BootTimeoutError(name, timeoutMs, e.message);
    case "VM_CRASHED":
      return new VmCrashedError(name, e.message);
    case "STILL_RUNNING":
      return new StillRunningError(name);
    case "BACKEND_UNAVAILABLE":
      return new KrunboxError("BACKEND_UNAVAILABLE", e.message);
    default:
      return new KrunboxError(e.code as KrunboxError["code"], e.message);
  }
}

async function firstLine(stream: ReadableStream<Uint8Array>): Promise<string | undefined> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return buf || undefined;
      buf += value;
      const nl = buf.indexOf("\n");
      if (nl >= 0) return buf.slice(0, nl);
    }
  } finally {
    reader.releaseLock();
  }
}
