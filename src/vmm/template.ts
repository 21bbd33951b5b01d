/**
 * Snapshot templates (qemu): a sandbox whose root is on block devices (an
 * OCI image: the shared EROFS lower and an ext4 upper) is created by
 * restoring a saved VM instead of booting one.
 *
 * - **Build** (the first create of a key): a VM of the same shape boots to
 *   agent-ready with a neutral hostname and env on the template's own upper
 *   disk, its RAM a shared mapping of the file `ram`; it runs one warm-up
 *   exec (`sh -c true`, so a restore's first exec finds the shell and the
 *   agent's spawn path in the saved caches); QMP migrates its state to
 *   `state` (`exec:cat > state`: Debian's qemu 7.2 has no `file:` URI) with
 *   `x-ignore-shared`, so the stream holds the devices only (the RAM is the
 *   file); qemu quits, `ram` is synced, and the directory is renamed into
 *   place (a half-built template is never seen).
 * - **Restore**: the sandbox's upper becomes a copy of the template's
 *   (`cp --sparse=always --reflink=auto`: only written blocks, shared where
 *   the filesystem can); qemu starts with its RAM a private copy-on-write
 *   mapping of `ram` (its writes never reach the file: nothing is copied in
 *   or zeroed first, and unwritten pages stay shared in the page cache) and
 *   `-incoming defer`, and loads `state` from a descriptor of its own
 *   (`migrate-incoming fd:3` over QMP: src/vmm/qemu.ts).
 *   The agent, restored past its `ready`, keeps serving its virtio-serial
 *   port; qemu's chardev connects to this sandbox's runner, which then
 *   sends `guest.configure` (the clock, fresh entropy from the host, the
 *   hostname and env: see runner.ts). A restore that fails (qemu cannot
 *   load the state, the guest does not answer) discards the template and
 *   the runner boots the same sandbox cold in the same create, its ready
 *   event saying why; the next create builds the template anew.
 * - **Key**: everything the saved state depends on: the image's lower
 *   (path, by manifest digest, and identity), the kernel, the initramfs and
 *   agent (their versions and file identities), the qemu binary, the host's
 *   accelerator and TSC, the shape (cpus, memory, upper size, network
 *   device and MAC, log level, modules, the boot config but hostname and
 *   env) and qemu's whole command line (with placeholder paths). A change
 *   makes a new key, so a template is never used across them.
 *
 * A snapshot (`sb.snapshot`) saves the same way, but its VM's RAM is
 * private (anonymous, or a restore's copy-on-write mapping), so its stream
 * holds the RAM too, and a fork restores it into anonymous memory.
 *
 * Directory roots and volumes (virtiofs cannot migrate), disk-image roots
 * (written in place: no per-sandbox copy to restore onto), a later start of
 * a stopped sandbox (its disk is its own) and libkrun (no snapshot API) boot
 * cold, and say why in the ready event.
 *
 * @module
 */

import { join } from "node:path";
import { AlreadyExistsError, BackendUnavailableError, InvalidConfigError, NotFoundError } from "../errors.ts";
import { settings } from "../settings.ts";
import { assetDir, assetPath } from "../store/assets.ts";
import { homeLayout } from "../store/home.ts";
import { lockWait } from "../store/lock.ts";
import { runCommand } from "../util/command.ts";
import { closeQuietly } from "../util/close.ts";
import { encodeFrame, type Frame, type FrameDecodeError, FrameStream, isDecodeError } from "../agent/frame.ts";
import type { ByteChannel } from "../agent/writer.ts";
import { writeAll } from "../util/bytes.ts";
import { bootConfigAnswer } from "./relay.ts";
import type { RunnerLog } from "./runner_log.ts";
import type { Backend, BootOptions, Vm, VmSpec, VmStart } from "./backend.ts";
import { probeHost } from "./detect.ts";
import { qemuAccel, qemuArgs, qemuBackend, STREAM_CAPABILITIES } from "./qemu.ts";
import type { Qmp } from "./qmp.ts";

/** Bumped when what a template holds changes meaning (2: its RAM a file of its own, saved after a warm-up exec). */
const TEMPLATE_FORMAT = 2;

/**
 * What the template VM runs once before it is saved: the image's shell on
 * PATH, doing nothing. Its binary and libraries, the PATH lookup and the
 * agent's spawn path are then in the saved guest's caches, so a restored
 * sandbox's first exec does not read them from disk (~50 ms of it under
 * TCG). An image without `sh` answers not_found: nothing warmed, no harm.
 */
const WARM_UP_EXEC = { cmd: "sh", args: ["-c", "true"] } as const;

/** The hostname a template boots with (each restore sets its own). */
export const TEMPLATE_HOSTNAME = "krunbox-template";

/** A template's files. */
export interface TemplatePaths {
  readonly dir: string;
  /** The migration stream (a template's: the devices only; a snapshot's: RAM too). */
  readonly state: string;
  /** A template's guest RAM, mapped copy-on-write by every restore (a snapshot has none: its RAM is in `state`). */
  readonly ram: string;
  /** The upper disk as the saved guest left it. */
  readonly upper: string;
  /** What the template was made from, and its agent's ready. */
  readonly meta: string;
  /** Held while the template is built (or checked). */
  readonly lock: string;
}

/**
 * The files of template `key` under `root` (default: the state home's).
 *
 * @example
 * ```ts
 * import { templatePaths } from "./template.ts";
 * console.log(templatePaths("ab12", "/tmp/t").state); // /tmp/t/ab12/state
 * ```
 */
export function templatePaths(key: string, root: string = homeLayout().templates): TemplatePaths {
  const dir = join(root, key);
  return {
    dir,
    state: join(dir, "state"),
    ram: join(dir, "ram"),
    upper: join(dir, "upper.ext4"),
    meta: join(dir, "meta.json"),
    lock: `${dir}.lock`,
  };
}

/**
 * Why a spec cannot be restored from a template (it boots cold), or
 * undefined when it can.
 *
 * @example
 * ```ts
 * import { coldReason } from "./template.ts";
 * console.log(coldReason({ name: "a", backend: "qemu", cpus: 1, memoryMib: 256, dir: "/s",
 *   root: { kind: "dir", path: "/r" }, shares: [], ports: [], network: "none", boot: {}, bootTimeoutMs: 1, firstBoot: true }));
 * // directory roots are on virtiofs, which cannot migrate
 * ```
 */
export function coldReason(spec: VmSpec): string | undefined {
  if (spec.backend !== "qemu") return "libkrun has no snapshot API";
  if (!settings.templates()) return "templates are off (KRUNBOX_TEMPLATES=0)";
  if (spec.root.kind === "dir") return "directory roots are on virtiofs, which cannot migrate";
  if (spec.root.kind === "disk") return "a disk image root is written in place: no per-sandbox copy to restore onto";
  if (spec.shares.length > 0) return "volumes are on virtiofs, which cannot migrate";
  if (!spec.firstBoot) return "a restart boots the sandbox's own disk";
  // Its own CA (netd's, per sandbox) is installed in the guest at boot: no template could hold it.
  if (spec.caPem || (spec.secrets?.length ?? 0) > 0) return "a sandbox with secrets trusts its own CA from boot";
  return undefined;
}

/** A file's identity for a key: changed content means a new size, mtime or inode. */
async function identity(path: string): Promise<string> {
  const st = await Deno.stat(path);
  return `${path}:${st.size}:${st.mtime?.getTime()}:${st.ino}`;
}

async function version(name: "kernel" | "initramfs" | "agent"): Promise<string> {
  return (await Deno.readTextFile(join(assetDir(name), "VERSION")).catch(() => "")).trim();
}

/**
 * The template key of a spec that can have one ({@link coldReason} is
 * undefined): 32 hex digits of a SHA-256 over everything the saved state depends on.
 * Hostname and env are not in it: each restore sets its own.
 *
 * @example
 * ```ts ignore
 * // Needs provisioned assets and an image lower; tests/e2e/template_test.ts checks a changed shape makes a new key.
 * import { templateKey } from "./template.ts";
 * declare const spec: import("./backend.ts").VmSpec;
 * console.log(await templateKey(spec));
 * ```
 */
export async function templateKey(spec: VmSpec): Promise<string> {
  if (spec.root.kind !== "overlay") throw new TypeError("only an overlay root has a template");
  // The caller probed the host when it chose the backend (vmSpecOf): not again per create.
  const host = spec.host ?? await probeHost();
  const { hostname: _h, env: _e, ...boot } = spec.boot;
  const qemu = spec.programs?.["qemu-system-x86_64"];
  const inputs = {
    format: TEMPLATE_FORMAT,
    lower: await identity(spec.root.lower),
    upperBytes: (await Deno.stat(spec.root.upper)).size,
    kernel: [await version("kernel"), await identity(assetPath("kernel"))],
    initramfs: [await version("initramfs"), await identity(assetPath("initramfs"))],
    agent: await version("agent"),
    qemu: qemu ? await identity(qemu) : "qemu-system-x86_64",
    cpus: spec.cpus,
    memoryMib: spec.memoryMib,
    network: spec.network,
    mac: spec.netd?.guest.mac ?? null,
    logLevel: spec.logLevel ?? "warn",
    extraModules: spec.extraModules ?? [],
    boot,
    // The command line with placeholder paths: a change to how qemu is started is a new template too.
    args: qemuArgs({ ...spec, dir: "/S", root: { ...spec.root, lower: "/L", upper: "/U" }, qmp: false }, {
      kernel: "/K",
      initrd: "/I",
      accel: qemuAccel(host),
      tscKhz: host.tscKhz,
      fsSockets: {},
      netSocket: spec.network === "user" ? "/N" : undefined,
    }),
  };
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(inputs)));
  // 128 bits: enough against collisions, and short enough for the build directory's sockets (SUN_LEN).
  return Array.from(new Uint8Array(digest).subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A template's `meta.json`. */
interface TemplateMeta {
  readonly key: string;
  readonly createdAt: string;
  /** The template boot's agent `ready` params. */
  readonly ready: Record<string, unknown>;
  /** How long the template's boot took to agent-ready and its save, ms. */
  readonly bootMs: number;
  readonly saveMs: number;
}

async function readMeta(paths: TemplatePaths, ram = false): Promise<TemplateMeta | undefined> {
  try {
    await Deno.stat(paths.state);
    if (ram) await Deno.stat(paths.ram);
    return JSON.parse(await Deno.readTextFile(paths.meta)) as TemplateMeta;
  } catch {
    return undefined;
  }
}

/** A sparse copy (a reflink where the filesystem can) of `from` at `to`, replacing it. */
export async function copyDisk(from: string, to: string): Promise<void> {
  await Deno.remove(to).catch(() => {});
  await runCommand("cp", ["--sparse=always", "--reflink=auto", from, to]);
}

/** The template VM's agent frames, read by one reader for the whole build. */
type FrameReader = ReadableStreamDefaultReader<Frame | FrameDecodeError>;

/** The agent's first frame on a freshly booted VM's stream: its `ready` params. */
async function readReady(
  agent: ByteChannel,
  reader: FrameReader,
  exited: Promise<unknown>,
  bootConfig: Readonly<Record<string, unknown>> | undefined,
): Promise<Record<string, unknown>> {
  let config = bootConfig;
  const next = async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new BackendUnavailableError("qemu", "the template VM closed its agent port", "see runner.log");
      if (isDecodeError(value)) continue;
      if (value.header.method === "ready") return value.header.params ?? {};
      // The guest asks for its boot config over the channel (as from the relay of an ordinary boot), once.
      if (value.header.method === "boot.config" && typeof value.header.id === "number") {
        await writeAll(agent, encodeFrame(bootConfigAnswer(value.header.id, config)));
        config = undefined;
      }
    }
  };
  return await Promise.race([
    next(),
    exited.then(() => {
      throw new BackendUnavailableError("qemu", "the template VM exited before its agent was ready", "see runner.log");
    }),
  ]);
}

/**
 * Runs {@link WARM_UP_EXEC} in the template VM and waits for its exit (a
 * spawn error ends it too). A warm-up still running at the deadline fails
 * the build: no template may hold a process of its own.
 */
async function warmUp(agent: ByteChannel, reader: FrameReader, exited: Promise<unknown>, timeoutMs: number) {
  const id = 1;
  await writeAll(agent, encodeFrame({ jsonrpc: "2.0", id, method: "exec.start", params: WARM_UP_EXEC }));
  const done = async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new BackendUnavailableError("qemu", "the template VM closed its agent port", "see runner.log");
      if (isDecodeError(value)) continue;
      const h = value.header;
      if (h.id === id && h.error) return; // not started (no shell in the image): nothing to wait for
      if (h.method === "exec.exit" && (h.params as { ref?: unknown } | undefined)?.ref === id) return;
    }
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      done(),
      exited.then(() => {
        throw new BackendUnavailableError("qemu", "the template VM exited during its warm-up", "see runner.log");
      }),
      new Promise((_, reject) =>
        timer = setTimeout(
          () =>
            reject(new BackendUnavailableError("qemu", "the template's warm-up exec did not end", "see runner.log")),
          timeoutMs,
        )
      ),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Writes the VM's state to `state` over QMP, then quits qemu. The VM is
 * migrated running (the idle guest converges at once; qemu pauses it for
 * the last pass), so the stream says "running" and a restore starts the
 * guest by itself, with no monitor of its own.
 */
async function saveState(qmp: Qmp, state: string): Promise<void> {
  await migrateTo(qmp, state);
  await qmp.execute("quit").catch(() => {});
}

/** Migrates the VM to the file `state`; qemu leaves it paused once done. */
async function migrateTo(qmp: Qmp, state: string): Promise<void> {
  await qmp.execute("migrate-set-capabilities", {
    capabilities: [{ capability: "events", state: true }, ...STREAM_CAPABILITIES],
  });
  // Unthrottled: the default (128 MiB/s) would make a 256 MiB guest's save wait for nothing.
  await qmp.execute("migrate-set-parameters", { "max-bandwidth": Number.MAX_SAFE_INTEGER });
  // Only this migration's events end the wait (a restored VM's monitor has seen its restore's).
  qmp.dropEvents();
  await qmp.execute("migrate", { uri: `exec:cat > ${shellQuote(state)}` });
  const done = await qmp.event((e) => {
    const status = (e.data as { status?: string } | undefined)?.status;
    return e.event === "MIGRATION" && (status === "completed" || status === "failed" || status === "cancelled");
  });
  const status = (done.data as { status: string }).status;
  if (status !== "completed") {
    const info = await qmp.execute("query-migrate").catch(() => ({})) as { "error-desc"?: string };
    throw new BackendUnavailableError(
      "qemu",
      `saving the VM failed: ${info["error-desc"] ?? status}`,
      "see runner.log",
    );
  }
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * A frame socket nobody reads from beyond draining: a networked template's
 * virtio-net needs a peer while it boots (each restore connects to its own
 * sandbox's netd).
 */
async function drainingPeer(path: string): Promise<Deno.UnixListener> {
  await Deno.mkdir(join(path, ".."), { recursive: true });
  await Deno.remove(path).catch(() => {});
  const l = Deno.listen({ transport: "unix", path });
  (async () => {
    try {
      for await (const c of l) c.readable.pipeTo(new WritableStream()).catch(() => {});
    } catch {
      // closed
    }
  })();
  return l;
}

/** Boots the template VM of `spec` in a fresh directory, saves it, and moves it into place. */
async function buildTemplate(
  spec: VmSpec,
  key: string,
  paths: TemplatePaths,
  signal: AbortSignal,
  log: RunnerLog,
): Promise<TemplateMeta> {
  if (spec.root.kind !== "overlay") throw new TypeError("only an overlay root has a template");
  const build = `${paths.dir}.b`;
  await Deno.remove(build, { recursive: true }).catch(() => {});
  await Deno.mkdir(build, { recursive: true, mode: 0o700 });
  const upper = join(build, "upper.ext4");
  // The sandbox's upper is fresh (first boot): the template starts from the same empty disk.
  await copyDisk(spec.root.upper, upper);
  const tspec: VmSpec = {
    ...spec,
    name: `template-${key.slice(0, 12)}`,
    dir: build,
    root: { ...spec.root, upper },
    boot: { ...spec.boot, hostname: TEMPLATE_HOSTNAME, env: {} },
    qmp: true,
    incomingFile: undefined,
    // Its RAM is the template's file: the save below writes the devices only (x-ignore-shared).
    ramFile: { path: join(build, "ram"), share: true },
  };
  const peer = spec.network === "user" ? await drainingPeer(join(build, "net", "net.sock")) : undefined;
  const t0 = performance.now();
  let vm: Vm | undefined;
  try {
    vm = await qemuBackend.boot(tspec, signal, log);
    // A template VM that does not come up in the boot timeout is killed (its exit ends the wait).
    const booting = vm;
    const timer = setTimeout(() => booting.kill(), spec.bootTimeoutMs);
    const reader = vm.agent.readable.pipeThrough(new FrameStream()).getReader();
    const ready = await readReady(vm.agent, reader, vm.exited, vm.bootConfig as Record<string, unknown> | undefined)
      .finally(() => clearTimeout(timer));
    const bootMs = Math.round(performance.now() - t0);
    await warmUp(vm.agent, reader, vm.exited, spec.bootTimeoutMs);
    using monitor = vm.monitor;
    if (!monitor) throw new Error("the template VM has no monitor");
    const t1 = performance.now();
    await saveState(monitor, join(build, "state"));
    await vm.exited;
    // On disk before the template is: a host crash must not leave a torn RAM file behind a whole meta.json.
    {
      using ram = await Deno.open(join(build, "ram"), { read: true });
      await ram.syncData();
    }
    const saveMs = Math.round(performance.now() - t1);
    const meta: TemplateMeta = { key, createdAt: new Date().toISOString(), ready, bootMs, saveMs };
    await Deno.writeTextFile(join(build, "meta.json"), JSON.stringify(meta, null, 1));
    // The console of the template boot stays beside it (for a look when a restore misbehaves).
    await Deno.rename(join(build, "console.fifo"), join(build, "console.log")).catch(() => {});
    await Deno.remove(join(build, "net"), { recursive: true }).catch(() => {});
    await Deno.remove(paths.dir, { recursive: true }).catch(() => {});
    await Deno.rename(build, paths.dir);
    log.line(`template ${key.slice(0, 12)} built: boot ${bootMs} ms, save ${saveMs} ms`);
    return meta;
  } catch (e) {
    vm?.kill();
    await vm?.exited;
    await Deno.remove(build, { recursive: true }).catch(() => {});
    throw e;
  } finally {
    if (vm) closeQuietly(vm.agent);
    if (peer) closeQuietly(peer);
  }
}

/**
 * The template of `spec` (built first when there is none), under its lock
 * so that concurrent creates of one key build it once.
 */
async function ensureTemplate(
  spec: VmSpec,
  key: string,
  signal: AbortSignal,
  log: RunnerLog,
): Promise<{ meta: TemplateMeta; paths: TemplatePaths; built: boolean }> {
  const paths = templatePaths(key);
  const ready = await readMeta(paths, true);
  if (ready) return { meta: ready, paths, built: false };
  await Deno.mkdir(homeLayout().templates, { recursive: true, mode: 0o700 });
  using lock = await lockWait(paths.lock, spec.bootTimeoutMs * 2, signal);
  if (!lock) throw new BackendUnavailableError("qemu", `template ${key} is being built for too long`, "retry");
  const meanwhile = await readMeta(paths, true);
  if (meanwhile) return { meta: meanwhile, paths, built: false };
  return { meta: await buildTemplate(spec, key, paths, signal, log), paths, built: true };
}

/**
 * The qemu backend with templates: restores a spec that can be
 * ({@link coldReason}) from its template, building it first if needed, and
 * boots the others cold (so does a failed template build: the sandbox
 * still comes up, the reason in its ready event). The {@link Vm.start} says
 * which.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/template_test.ts boots through it.
 * import { templatingBackend } from "./template.ts";
 * declare const spec: import("./backend.ts").VmSpec;
 * declare const log: import("./runner_log.ts").RunnerLog;
 * const vm = await templatingBackend().boot(spec, new AbortController().signal, log);
 * console.log(vm.start);
 * ```
 */
export function templatingBackend(): Backend {
  return {
    kind: "qemu",
    async boot(spec: VmSpec, signal: AbortSignal, log: RunnerLog, options: BootOptions = {}): Promise<Vm> {
      // An overlay root's VM keeps a monitor: `runner.snapshot` saves it through it.
      const monitored = monitoredSpec(spec);
      const cold = (reason: string) => bootCold(spec, reason, signal, log, options);
      const reason = coldReason(spec);
      if (spec.fromSnapshot) {
        return await fromSnapshot({ ...spec, qmp: true }, spec.fromSnapshot, reason, signal, log, options);
      }
      if (reason || spec.root.kind !== "overlay") return await cold(reason ?? "not an overlay root");
      const t0 = performance.now();
      const key = await templateKey(spec);
      let found;
      try {
        found = await ensureTemplate(spec, key, signal, log);
      } catch (e) {
        signal.throwIfAborted();
        log.line(`template ${key.slice(0, 12)} could not be built: ${(e as Error).message}`);
        return await cold(`the template could not be built: ${(e as Error).message}`);
      }
      const t1 = performance.now();
      await copyDisk(found.paths.upper, spec.root.upper);
      const t2 = performance.now();
      // A netd that could not start fails this boot as itself, never as a failed restore (that would boot cold).
      await options.netReady;
      const t3 = performance.now();
      let vm: Vm;
      try {
        vm = await qemuBackend.boot(
          // The template's RAM mapped copy-on-write: nothing to copy in or zero first; the stream is the devices.
          { ...monitored, incomingFile: found.paths.state, ramFile: { path: found.paths.ram, share: false } },
          signal,
          log,
          options,
        );
      } catch (e) {
        signal.throwIfAborted();
        // qemu could not even start on it: the runner boots cold in its place (its netd has served its one peer).
        throw new TemplateRestoreError(key, (e as Error).message, { cause: e });
      }
      log.line(
        `restoring template ${key.slice(0, 12)}: key and lookup ${Math.round(t1 - t0)} ms, upper copy ${
          Math.round(t2 - t1)
        } ms, then waited for netd ${Math.round(t3 - t2)} ms, qemu started and connected ${
          Math.round(performance.now() - t3)
        } ms`,
      );
      const start: VmStart = { mode: "restored", template: key, built: found.built, ready: found.meta.ready };
      return { ...vm, start };
    },
  };
}

/** An overlay root's VM keeps a monitor: `runner.snapshot` saves it through it. */
function monitoredSpec(spec: VmSpec): VmSpec {
  return spec.root.kind === "overlay" ? { ...spec, qmp: true } : spec;
}

/**
 * A cold boot of `spec` through qemu (with the monitor an overlay root's VM
 * keeps), its {@link Vm.start} saying `reason`: what the templating backend
 * does for a spec it cannot restore, and what the runner does after a
 * restore failed ({@link TemplateRestoreError}).
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/template_test.ts ("falls back to a cold boot") boots through it.
 * import { bootCold } from "./template.ts";
 * declare const spec: import("./backend.ts").VmSpec;
 * declare const log: import("./runner_log.ts").RunnerLog;
 * const vm = await bootCold(spec, "the template could not be restored", new AbortController().signal, log);
 * console.log(vm.start); // { mode: "cold", reason: "the template could not be restored" }
 * ```
 */
export async function bootCold(
  spec: VmSpec,
  reason: string,
  signal: AbortSignal,
  log: RunnerLog,
  options: BootOptions = {},
): Promise<Vm> {
  const vm = await qemuBackend.boot(monitoredSpec(spec), signal, log, options);
  return { ...vm, start: { mode: "cold", reason } };
}

/**
 * qemu could not start on template `key`'s state: the runner discards the
 * template and boots the same sandbox cold (never seen by a caller).
 *
 * @example
 * ```ts
 * import { TemplateRestoreError } from "./template.ts";
 * console.log(new TemplateRestoreError("ab12", "qemu exited").key); // ab12
 * ```
 */
export class TemplateRestoreError extends Error {
  /** Creates it for template `key`, with what went wrong. */
  constructor(readonly key: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TemplateRestoreError";
  }
}

/**
 * Removes template `key` (a restore from it failed: the next create builds
 * it anew).
 *
 * @example
 * ```ts
 * import { discardTemplate } from "./template.ts";
 * await discardTemplate("0123456789abcdef0123456789abcdef"); // nothing there: nothing done
 * ```
 */
export async function discardTemplate(key: string): Promise<void> {
  await Deno.remove(templatePaths(key).dir, { recursive: true }).catch(() => {});
}

/**
 * The files of snapshot `name` (the same layout as a template's).
 *
 * @example
 * ```ts
 * import { snapshotPaths } from "./template.ts";
 * console.log(snapshotPaths("s1", "/tmp/s").state); // /tmp/s/s1/state
 * ```
 */
export function snapshotPaths(name: string, root: string = homeLayout().snapshots): TemplatePaths {
  return templatePaths(name, root);
}

/**
 * Saves the running VM behind `qmp` as snapshot `name`: its state (the VM
 * pauses for the migration's last pass), a copy of its upper disk taken
 * while it is paused, and the key of its image and shape; then the VM goes
 * on. A name already taken is refused.
 *
 * @example
 * ```ts ignore
 * // Needs a running qemu VM with a monitor; tests/e2e/template_test.ts ("fork") snapshots one.
 * import { saveSnapshot } from "./template.ts";
 * declare const qmp: import("./qmp.ts").Qmp, spec: import("./backend.ts").VmSpec;
 * await saveSnapshot(qmp, spec, "s1", {});
 * ```
 */
export async function saveSnapshot(
  qmp: Qmp,
  spec: VmSpec,
  name: string,
  ready: Record<string, unknown>,
): Promise<void> {
  if (spec.root.kind !== "overlay" || spec.shares.length > 0) {
    throw new InvalidConfigError("snapshot", "only a qemu sandbox of an OCI image without volumes can be snapshotted");
  }
  const paths = snapshotPaths(name);
  await Deno.mkdir(homeLayout().snapshots, { recursive: true, mode: 0o700 });
  using lock = await lockWait(paths.lock, 0);
  if (!lock || await readMeta(paths)) throw new AlreadyExistsError("snapshot", name);
  const build = `${paths.dir}.b`;
  await Deno.remove(build, { recursive: true }).catch(() => {});
  await Deno.mkdir(build, { mode: 0o700 });
  try {
    const key = await templateKey(spec);
    const upper = spec.root.upper;
    // One save of this VM at a time (snapshots under other names wait): the pause, the disk copy and the resume
    // are this save's alone.
    await qmp.exclusive(async () => {
      try {
        await migrateTo(qmp, join(build, "state"));
        // Paused: the disk holds what the saved memory last flushed to it.
        await copyDisk(upper, join(build, "upper.ext4"));
      } finally {
        await qmp.execute("cont").catch(() => {});
      }
    });
    const meta: TemplateMeta = { key, createdAt: new Date().toISOString(), ready, bootMs: 0, saveMs: 0 };
    await Deno.writeTextFile(join(build, "meta.json"), JSON.stringify(meta, null, 1));
    await Deno.rename(build, paths.dir);
  } catch (e) {
    await Deno.remove(build, { recursive: true }).catch(() => {});
    throw e;
  }
}

/** Restores snapshot `name` for a spec of the same image and shape (else an {@link InvalidConfigError}). */
async function fromSnapshot(
  spec: VmSpec,
  name: string,
  refused: string | undefined,
  signal: AbortSignal,
  log: RunnerLog,
  options: BootOptions = {},
): Promise<Vm> {
  if (refused) throw new InvalidConfigError("fromSnapshot", `cannot fork snapshot ${name}: ${refused}`);
  if (spec.root.kind !== "overlay") throw new InvalidConfigError("fromSnapshot", "only an OCI image root can fork");
  const paths = snapshotPaths(name);
  const meta = await readMeta(paths);
  if (!meta) throw new NotFoundError("snapshot", name);
  if (meta.key !== await templateKey(spec)) {
    throw new InvalidConfigError("fromSnapshot", `snapshot ${name} was taken of another image or shape`);
  }
  await copyDisk(paths.upper, spec.root.upper);
  const vm = await qemuBackend.boot({ ...spec, incomingFile: paths.state }, signal, log, options);
  return { ...vm, start: { mode: "restored", template: meta.key, built: false, ready: meta.ready, snapshot: name } };
}
