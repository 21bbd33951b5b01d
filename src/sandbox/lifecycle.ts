/**
 * The sandbox lifecycle on the host: state directories, the store, name
 * locks, status reconciliation, turning a config into a VM spec, and
 * launching the runner. `Sandbox` and `SandboxHandle` are thin layers over
 * these functions.
 *
 * States: `creating` (booting) → `running` ⇄ `draining` → `stopped`;
 * any live state → `crashed` when the runner is gone without having written
 * a terminal status (its lock is free). Every reader reconciles, so a crash
 * is seen even if no caller was alive when it happened.
 *
 * @module
 */

import { join } from "node:path";
import { AgentClient } from "../agent/client.ts";
import {
  AlreadyExistsError,
  BackendUnavailableError,
  BootTimeoutError,
  InvalidConfigError,
  KrunboxError,
  NotFoundError,
  StateError,
  StillRunningError,
  VmCrashedError,
} from "../errors.ts";
import { type SandboxRow, Store, type StoredStatus } from "../store/db.ts";
import { homeLayout } from "../store/home.ts";
import { isLocked, lockWait } from "../store/lock.ts";
import { type SandboxPaths, sandboxPaths, type VmRoot, type VmSpec } from "../vmm/backend.ts";
import { chooseBackend, probeHost } from "../vmm/detect.ts";
import { checkedPrograms, libkrunChecks, qemuChecks } from "../vmm/prereqs.ts";
import type { RunnerEvent } from "../vmm/runner.ts";
import { logTail } from "../util/logs.ts";
import { parseConfig, type SandboxConfig } from "./config.ts";
import { type PulledImage, pullImage, type PullOptions } from "../image/pull.ts";
import type { ImageConfig } from "../image/registry.ts";
import { createUpperDisk } from "../image/upper.ts";
import { DEFAULTS, settings } from "../settings.ts";

/** The status a reader sees. */
export type SandboxStatus = "running" | "draining" | "stopped" | "crashed";

/** PATH of guest processes; `/.msb/scripts` holds the builder's scripts. */
export const GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.msb/scripts";

/** How long create/start waits for the agent's ready (`KRUNBOX_BOOT_TIMEOUT_MS`). */
const bootTimeoutMs = settings.bootTimeoutMs;
/** How long to wait for another process holding a sandbox name. */
const NAME_LOCK_MS = DEFAULTS.nameLockMs;

/**
 * Opens the store, creating the state home. A read-only or unusable home is
 * a {@link StateError} that names the path and the variable to set.
 *
 * @example
 * ```ts
 * import { openStore } from "./lifecycle.ts";
 * using store = await openStore();
 * ```
 */
export async function openStore(): Promise<Store> {
  const home = homeLayout();
  try {
    await Deno.mkdir(home.sandboxes, { recursive: true });
  } catch (cause) {
    throw new StateError(`cannot create the state home ${home.root}: ${(cause as Error).message}; set KRUNBOX_HOME`, {
      cause,
    });
  }
  return Store.open(home.db);
}

/**
 * The directory files of a sandbox.
 *
 * @example
 * ```ts
 * import { pathsOf } from "./lifecycle.ts";
 * console.log(pathsOf("job-1").consoleLog);
 * ```
 */
export function pathsOf(name: string): SandboxPaths {
  return sandboxPaths(join(homeLayout().sandboxes, name));
}

/**
 * The status of a stored sandbox, reconciled with its runner's lock (and
 * written back when it changed).
 *
 * @example
 * ```ts
 * import { openStore, reconcile } from "./lifecycle.ts";
 * using store = await openStore();
 * for (const row of store.list()) console.log(row.name, reconcile(store, row));
 * ```
 */
export function reconcile(store: Store, row: SandboxRow): SandboxStatus {
  const live = row.status === "creating" || row.status === "running" || row.status === "draining";
  if (!live) return row.status as SandboxStatus;
  if (isLocked(pathsOf(row.name).runnerLock)) {
    return row.status === "creating" ? "running" : row.status as SandboxStatus;
  }
  // Re-read: the runner may have written a terminal status just before releasing its lock.
  const fresh = store.get(row.name);
  if (fresh && fresh.status !== row.status) return reconcile(store, fresh);
  store.update(row.name, { status: "crashed", stopReason: "the runner disappeared without a clean stop" });
  return "crashed";
}

/**
 * Loads a stored sandbox or throws {@link NotFoundError}.
 *
 * @example
 * ```ts
 * import { openStore, requireRow } from "./lifecycle.ts";
 * using store = await openStore();
 * const row = requireRow(store, "job-1");
 * ```
 */
export function requireRow(store: Store, name: string): SandboxRow {
  const row = store.get(name);
  if (!row) throw new NotFoundError("sandbox", name);
  return row;
}

/** What a sandbox's root needs at boot, and the image it comes from (OCI). */
interface PreparedRoot {
  readonly root: VmRoot;
  readonly image?: PulledImage;
}

/**
 * Resolves a config's root: checks a directory or disk image; for an OCI
 * image, pulls it (per `pull.policy`) and makes the sandbox's upper disk
 * unless it exists (a restart keeps what the guest wrote).
 */
async function prepareRoot(
  store: Store,
  config: SandboxConfig,
  paths: SandboxPaths,
  pull: PullOptions,
): Promise<PreparedRoot> {
  const img = config.image;
  if (img.kind === "oci") {
    const image = await pullImage(store, img.reference, pull);
    if (!(await Deno.stat(paths.upperDisk).then(() => true, () => false))) {
      await createUpperDisk(paths.upperDisk, config.rootDiskMib);
    }
    return { root: { kind: "overlay", lower: image.lower, upper: paths.upperDisk }, image };
  }
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(img.path);
  } catch (cause) {
    throw new InvalidConfigError("image", `${img.path} does not exist`, { cause });
  }
  if (img.kind === "dir") {
    if (!st.isDirectory) throw new InvalidConfigError("image", `${img.path} is not a directory`);
    if (img.writable) return { root: { kind: "dir", path: img.path } };
    // Read-only to the guest, like an OCI lower: its writes go to its own upper disk.
    if (!(await Deno.stat(paths.upperDisk).then(() => true, () => false))) {
      await createUpperDisk(paths.upperDisk, config.rootDiskMib);
    }
    return { root: { kind: "dir", path: img.path, upper: paths.upperDisk } };
  }
  if (!st.isFile) throw new InvalidConfigError("image", `${img.path} is not a disk image file`);
  return { root: { kind: "disk", path: img.path, format: img.format, fstype: img.fstype } };
}

/**
 * The config with the image's defaults under it: the image's Env below the
 * sandbox's env, its WorkingDir, User and Entrypoint/Cmd where the sandbox
 * sets none.
 *
 * @example
 * ```ts
 * import { withImageDefaults } from "./lifecycle.ts";
 * import { parseConfig } from "./config.ts";
 * const cfg = withImageDefaults(parseConfig({ name: "a", image: { kind: "oci", reference: "x" } }), {
 *   config: { Env: ["LANG=C.UTF-8"], WorkingDir: "/app" },
 * });
 * console.log(cfg.workdir); // /app
 * ```
 */
export function withImageDefaults(config: SandboxConfig, image: ImageConfig): SandboxConfig {
  const c = image.config ?? {};
  const env: Record<string, string> = {};
  for (const kv of c.Env ?? []) {
    const eq = kv.indexOf("=");
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const user = c.User
    ? (/^\d+$/.test(c.User.split(":")[0]) ? Number(c.User.split(":")[0]) : c.User.split(":")[0])
    : undefined;
  const entrypoint = [...(c.Entrypoint ?? []), ...(c.Cmd ?? [])];
  return parseConfig({
    ...config,
    env: { ...env, ...config.env },
    workdir: config.workdir ?? (c.WorkingDir || undefined),
    user: config.user ?? user,
    entrypoint: config.entrypoint ?? (entrypoint.length ? entrypoint : undefined),
  });
}

/** The real path of a volume's host directory (virtiofsd wants a directory, not a link to one). */
async function realDir(path: string): Promise<string> {
  try {
    const real = await Deno.realPath(path);
    if ((await Deno.stat(real)).isDirectory) return real;
  } catch (cause) {
    throw new InvalidConfigError("volumes", `${path} does not exist`, { cause });
  }
  throw new InvalidConfigError("volumes", `${path} is not a directory`);
}

/** The directory of a named volume, created on first use. */
async function namedVolume(name: string): Promise<string> {
  const dir = join(homeLayout().volumes, name);
  await Deno.mkdir(dir, { recursive: true });
  return await Deno.realPath(dir);
}

/**
 * Builds the VM spec of a config (resolving the backend and the root).
 *
 * @example
 * ```ts
 * import { vmSpecOf } from "./lifecycle.ts";
 * import { parseConfig } from "./config.ts";
 * const spec = await vmSpecOf(parseConfig({ name: "a", image: { kind: "dir", path: "/" } }), { kind: "dir", path: "/" });
 * console.log(spec.backend);
 * ```
 */
export async function vmSpecOf(config: SandboxConfig, root: VmRoot): Promise<VmSpec> {
  const { backend } = chooseBackend(config.backend, await probeHost());
  // Fail fast, in the caller, with the doctor's words.
  const programs = checkedPrograms(backend, backend === "qemu" ? await qemuChecks() : await libkrunChecks());
  const paths = pathsOf(config.name);
  return {
    name: config.name,
    backend,
    cpus: config.cpus,
    memoryMib: config.memoryMib,
    dir: paths.dir,
    root,
    shares: await Promise.all(
      config.volumes.map(async (v, i) =>
        v.kind === "tmpfs" ? [] : [{
          tag: `vol${i}`,
          hostPath: v.kind === "bind" ? await realDir(v.hostPath) : await namedVolume(v.name),
          guestPath: v.guestPath,
          readonly: v.readonly,
        }]
      ),
    ).then((s) => s.flat()),
    ports: config.ports,
    network: config.network.mode,
    boot: {
      hostname: config.hostname ?? config.name.replace(/[^a-zA-Z0-9-]/g, "-").slice(0, 63),
      env: { PATH: GUEST_PATH, HOME: "/root", ...config.env },
      workdir: config.workdir ?? "/",
      rlimits: { nofile: 1048576 },
      mounts: config.volumes.flatMap((v) =>
        v.kind === "tmpfs" ? [{ kind: "tmpfs", target: v.guestPath, sizeMib: v.sizeMib }] : []
      ),
    },
    bootTimeoutMs: bootTimeoutMs(),
    // Advanced: extra guest kernel modules (qemu), e.g. "kvm-amd" for a nested test host.
    extraModules: settings.guestModules(),
    idleTimeoutSecs: config.idleTimeoutSecs,
    maxDurationSecs: config.maxDurationSecs,
    programs,
  };
}

/** A launched runner: its ready event and a client connected to its relay. */
export interface Launched {
  readonly agent: AgentClient;
  /** The runner process (attached launches keep its stdin: the lifeline). */
  readonly runner: Deno.ChildProcess;
  readonly ready: Extract<RunnerEvent, { event: "ready" }>;
}

function runnerError(e: Extract<RunnerEvent, { event: "failed" }>, name: string, timeoutMs: number): KrunboxError {
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

/**
 * Starts the runner of a sandbox whose `vm.json` is written, waits for its
 * ready event and connects to its relay.
 *
 * @example
 * ```ts
 * import { launchRunner, pathsOf } from "./lifecycle.ts";
 * // const { agent } = await launchRunner(pathsOf("job-1"), "job-1", false);
 * ```
 */
export async function launchRunner(paths: SandboxPaths, name: string, detached: boolean): Promise<Launched> {
  const runnerUrl = new URL("../vmm/runner.ts", import.meta.url).href;
  const runner = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-prompt", runnerUrl, paths.dir, detached ? "detached" : "attached"],
    stdin: detached ? "null" : "piped",
    stdout: "piped",
    stderr: "inherit",
    detached,
    env: { KRUNBOX_HOME: homeLayout().root },
  }).spawn();
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
      new Promise<undefined>((r) => setTimeout(() => r(undefined), 2000)),
    ]);
    if (!status) runner.kill("SIGKILL");
    if (event?.event === "failed") throw runnerError(event, name, bootTimeoutMs());
    const tail = [await logTail(paths.runnerLog, 5), await logTail(paths.consoleLog, 10)].filter(Boolean).join("\n");
    throw new BackendUnavailableError(
      "runner",
      `the runner of "${name}" exited before the VM was ready${tail ? `; its logs end with:\n${tail}\n` : ""}`,
      `see ${paths.runnerLog} and run \`./dev doctor\``,
    );
  }
  let agent: AgentClient;
  try {
    agent = await AgentClient.connect(paths.agentSocket, { timeoutMs: 10_000 });
  } catch (e) {
    runner.kill("SIGKILL");
    throw e;
  }
  if (detached) runner.unref();
  return { agent, runner, ready: event };
}

/**
 * Deletes a stopped sandbox's state (row and directory). The caller holds
 * the name lock.
 *
 * @example
 * ```ts
 * import { deleteState, openStore } from "./lifecycle.ts";
 * using store = await openStore();
 * // await deleteState(store, "job-1");
 * ```
 */
export async function deleteState(store: Store, name: string): Promise<void> {
  await Deno.remove(pathsOf(name).dir, { recursive: true }).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
  store.delete(name);
}

/**
 * Runs `fn` holding the name lock of a sandbox (create, start, remove).
 *
 * @example
 * ```ts
 * import { withNameLock } from "./lifecycle.ts";
 * await withNameLock("job-1", async () => {});
 * ```
 */
export async function withNameLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
  await Deno.mkdir(homeLayout().sandboxes, { recursive: true });
  const lock = await lockWait(pathsOf(name).nameLock, NAME_LOCK_MS);
  if (!lock) throw new StateError(`sandbox "${name}" is locked by another process for over ${NAME_LOCK_MS} ms`);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}

/**
 * Creates the stored sandbox and its directory, then boots it. With
 * `replace`, an existing sandbox of that name is killed and removed first.
 *
 * @example
 * ```ts
 * import { createAndLaunch } from "./lifecycle.ts";
 * import { parseConfig } from "./config.ts";
 * // await createAndLaunch(parseConfig({ name: "a", image: { kind: "dir", path: "/srv/root" } }), false, false);
 * ```
 */
export async function createAndLaunch(
  requested: SandboxConfig,
  detached: boolean,
  replace: boolean,
  pull: PullOptions = {},
): Promise<{ launched: Launched; config: SandboxConfig }> {
  using store = await openStore();
  return await withNameLock(requested.name, async () => {
    const existing = store.get(requested.name);
    if (existing) {
      if (!replace) throw new AlreadyExistsError("sandbox", requested.name);
      await killRunner(store, existing);
      await deleteState(store, requested.name);
    }
    const paths = pathsOf(requested.name);
    await Deno.mkdir(paths.dir, { recursive: true });
    try {
      const { root, image } = await prepareRoot(store, requested, paths, pull);
      const config = image ? withImageDefaults(requested, image.config) : requested;
      const spec = await vmSpecOf(config, root);
      await Deno.writeTextFile(paths.vmSpec, JSON.stringify(spec, null, 1));
      if (!store.insert(config.name, JSON.stringify(config), "creating", detached)) {
        throw new AlreadyExistsError("sandbox", config.name);
      }
      store.update(config.name, { backend: spec.backend });
      if (image) store.setSandboxImage(config.name, image.manifestDigest);
      return { launched: await launchRunner(paths, config.name, detached), config };
    } catch (e) {
      await deleteState(store, requested.name).catch(() => {});
      throw e;
    }
  });
}

/**
 * Boots a stopped (or crashed) sandbox from its persisted config.
 *
 * @example
 * ```ts
 * import { relaunch } from "./lifecycle.ts";
 * // const { agent } = await relaunch("job-1", true);
 * ```
 */
export async function relaunch(
  name: string,
  detached: boolean,
): Promise<{ launched: Launched; config: SandboxConfig }> {
  using store = await openStore();
  return await withNameLock(name, async () => {
    const row = requireRow(store, name);
    const status = reconcile(store, row);
    if (status === "running" || status === "draining") throw new StillRunningError(name);
    const config = parseConfig(JSON.parse(row.config));
    const paths = pathsOf(name);
    const { root } = await prepareRoot(store, config, paths, { policy: "if-missing" });
    const spec = await vmSpecOf(config, root);
    await Deno.writeTextFile(paths.vmSpec, JSON.stringify(spec, null, 1));
    store.update(name, { status: "creating", stopReason: null, detached });
    try {
      return { launched: await launchRunner(paths, name, detached), config };
    } catch (e) {
      store.update(name, { status: "crashed", stopReason: `start failed: ${(e as Error).message}` });
      throw e;
    }
  });
}

/**
 * Kills a sandbox's runner if it is alive and waits for its lock to drop.
 *
 * @example
 * ```ts
 * import { killRunner, openStore, requireRow } from "./lifecycle.ts";
 * using store = await openStore();
 * // await killRunner(store, requireRow(store, "job-1"));
 * ```
 */
export async function killRunner(store: Store, row: SandboxRow): Promise<void> {
  const paths = pathsOf(row.name);
  if (!isLocked(paths.runnerLock)) return;
  try {
    await using agent = await AgentClient.connect(paths.agentSocket, { timeoutMs: 5000 });
    await agent.request("runner.kill", {}).catch(() => {});
  } catch {
    // the relay is not answering: nothing more we can do politely
  }
  const end = Date.now() + 10_000;
  while (isLocked(paths.runnerLock) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  if (isLocked(paths.runnerLock)) throw new StillRunningError(row.name);
  const fresh = store.get(row.name);
  if (fresh && (fresh.status as StoredStatus) !== "stopped") reconcile(store, fresh);
}
