/**
 * The runner: one process per sandbox that owns its VM (DESIGN.md,
 * "Processes"). Started by the library as
 * `deno run -A runner.ts <sandbox dir> attached|detached`.
 *
 * - Holds `runner.lock` for its whole life: readers that find the lock free
 *   and no terminal status know the sandbox crashed.
 * - Boots the VM through its backend, relays host clients on `agent.sock`,
 *   writes the status (running, draining, stopped, crashed) to its
 *   `status.json` (src/vmm/status_file.ts); it never opens the database.
 * - Tells its starter how boot went with one JSON line on stdout
 *   (`{"event":"ready",…}` or `{"event":"failed",…}`).
 * - Attached: EOF on stdin (the owner exited or dropped the sandbox, however
 *   it died) means orderly shutdown, then kill after a grace period.
 * - Enforces `maxDurationSecs` and `idleTimeoutSecs` host-side.
 * - A networked sandbox's engine (`netd`, {@link NetEngine}) starts before
 *   the VMM and must say `ready` first; its decisions are relayed to
 *   `runner.netEvents` subscribers and its counters answer
 *   `runner.netStats`. If netd dies while the VM runs, the VM keeps running
 *   without a network (its virtio-net backend has no peer any more: fail
 *   closed), and `runner.info` reports `network: "down"`. The VM is not
 *   killed for it: the guest's work and files stay reachable over the
 *   agent channel, which does not go through netd.
 *
 * The {@link Runner} class holds one VM's state; its status moves
 * starting (`creating`) → `running` → `draining` → `stopped`, or to
 * `crashed` from any of them, and each move is one of its methods.
 *
 * @module
 */

import { errnoName, loadLibc } from "../../ffi/libc.ts";
import { setupCommand } from "../setup_command.ts";
import { basename } from "node:path";
import {
  BackendUnavailableError,
  BootTimeoutError,
  errorToWire,
  KrunboxError,
  StillRunningError,
  VmCrashedError,
  type WireError,
} from "../errors.ts";
import { DEFAULTS, settings } from "../settings.ts";
import type { StoredStatus } from "../store/db.ts";
import { tryLock } from "../store/lock.ts";
import { closeQuietly } from "../util/close.ts";
import { logTail } from "../util/logs.ts";
import type { NotificationParams } from "../agent/rpc.ts";
import { type BootPhase, epochMs, PhaseClock } from "../util/phases.ts";
import {
  type Backend,
  type SandboxPaths,
  sandboxPaths,
  type Vm,
  type VmExit,
  type VmSpec,
  type VmStart,
} from "./backend.ts";
import { listenFresh } from "./channel.ts";
import { ConsoleLog } from "./console.ts";
import type { NetEngine } from "./netd.ts";
import { readRunnerSecrets } from "./runner_secrets.ts";
import { Relay } from "./relay.ts";
import { RunnerLog } from "./runner_log.ts";
import { bootCold, discardTemplate, saveSnapshot, TemplateRestoreError, templatingBackend } from "./template.ts";
import { configureParams } from "../agent/configure.ts";
import { StatusFile } from "./status_file.ts";
import { WARM_ARG } from "./runner_cache.ts";

/** The lines a runner prints on stdout for its starter. */
export type RunnerEvent =
  | {
    event: "ready";
    bootMs: number;
    boot: ReadyBoot;
    vmmPid: number;
    /**
     * The runner's part of the boot, from its spawn (the starter's clock,
     * given as the runner's third argument) to this line: `runner.*`, the
     * backend's `vmm.*`, and the guest's `guest.*` from its own uptime (a
     * restored guest: `vmm.restore`).
     */
    bootPhases: readonly BootPhase[];
    /** Restored from a snapshot template, or booted cold and why (src/vmm/template.ts). */
    start?: RunnerStart;
  }
  /** `error` is the error itself ({@link errorToWire}): the starter rethrows the same class with the same fields. */
  | { event: "failed"; code: string; message: string; error?: WireError };

/** The `boot` timings of the agent's `ready` (agent/PROTOCOL.md). */
export type ReadyBoot = NotificationParams<"ready">["boot"];

/** The ready event's `start`: {@link VmStart} without the template's ready params. */
export type RunnerStart =
  | { mode: "restored"; template: string; built: boolean }
  | { mode: "cold"; reason: string };

/** The ready event's `start` of a VM (a backend that says nothing has no snapshots: libkrun). */
function startOf(vm: Vm): RunnerStart {
  return vm.start?.mode === "restored"
    ? { mode: "restored", template: vm.start.template, built: vm.start.built }
    : { mode: "cold", reason: vm.start?.reason ?? "libkrun has no snapshot API" };
}

/** The agent's `ready` parameters the runner reads, and when the runner got them. */
interface ReadyParams {
  readonly boot: ReadyBoot;
  /** Epoch milliseconds at which the ready frame reached the runner. */
  readonly receivedMs: number;
}

/** At most this many of the agent's boot steps become phases. */
const MAX_GUEST_STEPS = 16;

function emit(e: RunnerEvent) {
  try {
    Deno.stdout.writeSync(new TextEncoder().encode(JSON.stringify(e) + "\n"));
  } catch {
    // the starter is gone: nobody to tell
  }
}

function emitFailed(err: KrunboxError) {
  emit({ event: "failed", code: err.code, message: err.message, error: errorToWire(err) });
}

/**
 * One sandbox's runner: boots its VM, relays its clients, and moves its
 * status as the VM lives and ends.
 */
export class Runner {
  #status: StoredStatus = "creating";
  #stopReason: string | null = null;
  /** An orderly end was asked for (stop, kill, drain, the owner gone): the VM's exit is `stopped`. */
  #orderly = false;
  /** The boot failed: the VM's exit changes nothing more. */
  #bootFailed = false;
  #attached: boolean;
  readonly #timers: ReturnType<typeof setTimeout>[] = [];
  /** Aborted when the boot takes too long: the backend kills what it started. */
  readonly #bootAbort = new AbortController();
  #vm?: Vm;
  #relay?: Relay;
  #net?: NetEngine;
  /** netd's start while it may be in flight (settles either way): whoever ends or replaces netd waits for it. */
  #netStarting?: Promise<NetEngine | undefined>;
  /** The guest console's bounded copy on the host (drained from the VMM's FIFO). */
  #console?: ConsoleLog;
  #finished?: Promise<void>;
  /** The agent's ready as clients got it (a snapshot keeps it for its forks). */
  #ready?: ReadyParams;
  /** When the backend's boot began (performance.now()). */
  #bootStart = 0;

  /** The secrets' values (env name → value), memory only: they go to netd's stdin. */
  readonly #secretValues?: ReadonlyMap<string, string>;

  /**
   * A runner for `spec`; `attached` when an owner holds its stdin; every
   * line of the sandbox's runner log goes to `log`. `clock` times the boot
   * (its origin the runner's spawn, `runner.start` and `runner.load`
   * already marked by {@link main}). `secretValues` for a spec with secrets.
   */
  constructor(
    readonly spec: VmSpec,
    readonly paths: SandboxPaths,
    readonly store: StatusFile,
    attached: boolean,
    readonly log: RunnerLog,
    readonly clock: PhaseClock = new PhaseClock(),
    secretValues?: ReadonlyMap<string, string>,
  ) {
    this.#attached = attached;
    this.#secretValues = secretValues;
  }

  /** The status last written. */
  get status(): StoredStatus {
    return this.#status;
  }

  /** Boots the VM and serves until it is gone; resolves with the process's exit code. */
  async run(): Promise<number> {
    let vm = await this.#boot();
    if (!vm) return 1;
    let relay = this.#adopt(vm);
    const listener = await listenFresh(this.paths.agentSocket);
    try {
      let ready: ReadyParams | undefined;
      if (vm.start?.mode === "restored") {
        const restored = await this.#configureRestored(vm, vm.start, relay);
        if (typeof restored === "string" && vm.start.snapshot) {
          // A fork is its snapshot or nothing: no cold boot in its place, and the template stays.
          this.#bootFailed = true;
          this.#finished = vm.exited.then((exit) => this.#exited(exit));
          vm.kill();
          await this.#finished;
          const err = new VmCrashedError(this.spec.name, restored);
          this.#failBoot(err, `boot failed: ${err.code}`);
          return 1;
        }
        if (typeof restored === "string") {
          vm = await this.#fallBackCold(vm.start.template, restored, vm);
          if (!vm) return 1;
          relay = this.#adopt(vm);
        } else ready = restored;
      }
      // This VM's exit ends the sandbox (a restored one that failed was replaced above, ending nothing).
      // The terminal status is written before any client hears that the VM is gone.
      this.#finished = vm.exited.then((exit) => this.#exited(exit));
      ready ??= await this.#awaitReady(vm, relay);
      if (!ready) return 1;
      this.#ready = ready;
      this.#running(vm, ready);
      relay.serve(listener);
      this.clock.mark("runner.ready");
      this.#log(`boot phases: ${this.clock}`);
      emit({
        event: "ready",
        bootMs: this.#bootMs(ready),
        boot: ready.boot,
        vmmPid: vm.vmmPid,
        bootPhases: this.clock.phases,
        start: startOf(vm),
      });
      this.#watch();
      await this.#finished;
      // Let a runner.stop/kill reply reach its caller before the connections close.
      await new Promise((r) => setTimeout(r, 0));
      await relay.closeClients();
      return 0;
    } finally {
      closeQuietly(listener);
    }
  }

  // --- status transitions -------------------------------------------------

  /** creating → running: the agent is ready. */
  #running(vm: Vm, ready: ReadyParams): void {
    // A restored guest's own boot steps are the template's: its phase is the restore.
    if (vm.start?.mode === "restored") this.clock.mark("vmm.restore", ready.receivedMs);
    else this.#guestPhases(ready);
    const bootMs = this.#bootMs(ready);
    this.store.update({ bootMs });
    const start = startOf(vm);
    this.#log(
      start.mode === "restored"
        ? `ready: restored from ${
          vm.start?.mode === "restored" && vm.start.snapshot ? `snapshot ${vm.start.snapshot} of ` : ""
        }` +
          `template ${start.template}${start.built ? " (built now)" : ""} in ${bootMs} ms`
        : `ready: kernel ${ready.boot.kernelMs} ms, agent start ${ready.boot.agentStartMs} ms, ready ${bootMs} ms; ` +
          `booted cold: ${start.reason}`,
    );
    this.#enter("running");
  }

  /** running → draining: no new execs; stops once the running ones end. */
  drain(): void {
    this.#relay!.startDraining();
    this.#enter("draining", "drained");
    this.#relay!.execsDone().then(() => this.stop("drained"));
  }

  /** Asks the guest to power off; kills the VMM after `graceMs`. Resolves when the VM is gone. */
  async stop(reason: string, graceMs: number = DEFAULTS.stopGraceMs): Promise<void> {
    if (this.#orderly) return;
    const vm = this.#vm!;
    this.#beginEnd(reason, "stopping");
    this.#relay!.requestGuest("shutdown", { graceMs: Math.min(graceMs, DEFAULTS.guestShutdownGraceMs) })
      .catch(() => {});
    const timer = setTimeout(() => {
      this.#log("the guest did not power off in time: killing the VMM");
      vm.kill();
    }, graceMs);
    await vm.exited;
    clearTimeout(timer);
  }

  /** Kills the VMM at once (an orderly end all the same: the status is `stopped`). */
  async kill(reason: string): Promise<void> {
    this.#beginEnd(reason, "killing");
    if (this.#vm!.inProcess) await this.#relay!.closeClients();
    this.#vm!.kill();
  }

  /** The runner outlives its owner from now on. */
  detach(): void {
    this.#attached = false;
    this.store.update({ detached: true });
  }

  /**
   * Takes a new name (a warm pool's handout: its caller holds the name's
   * lock, has linked the name's directory to this one's and moves the row):
   * every later status report names it.
   */
  rename(name: unknown): string {
    if (typeof name !== "string" || name.length === 0) throw new Error("runner.rename: a name");
    this.#log(`renamed: ${this.store.current.name} -> ${name}`);
    this.store.rename(name);
    return name;
  }

  /** Marks an orderly end; an in-process VMM ends this process with the guest, so its status cannot wait. */
  #beginEnd(reason: string, verb: string): void {
    this.#orderly = true;
    this.#stopReason = reason;
    this.#log(`${verb}: ${reason}`);
    if (this.#vm!.inProcess) this.#enter("stopped", reason);
  }

  /** any → stopped (an orderly end) or crashed: the VM is gone. */
  async #exited(exit: VmExit): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    this.#net?.kill();
    await this.#console?.[Symbol.asyncDispose]();
    await Deno.remove(this.paths.agentSocket).catch(() => {});
    if (this.#bootFailed) return this.#log("exited: the boot failed");
    if (this.#orderly) this.#enter("stopped", this.#stopReason ?? "stopped");
    else this.#enter("crashed", `the VM exited unexpectedly (code ${exit.code}, signal ${exit.signal})`);
    this.#log(`exited: ${this.#status} (${this.#stopReason})`);
  }

  /** creating → crashed: the boot failed; the starter hears why. */
  #failBoot(err: KrunboxError, reason: string): void {
    this.#bootFailed = true;
    emitFailed(err);
    this.#enter("crashed", reason);
  }

  #enter(status: StoredStatus, reason?: string): void {
    this.#status = status;
    if (reason !== undefined) this.#stopReason = reason;
    this.store.update({ status, stopReason: this.#stopReason, detached: !this.#attached });
  }

  // --- steps ----------------------------------------------------------------

  /** Takes `vm` as the sandbox's VM, its agent behind a new relay. */
  #adopt(vm: Vm): Relay {
    this.#vm = vm;
    const relay = this.#relay = new Relay(vm.agent, (method, params) => this.#control(method, params), vm.bootConfig);
    this.#net?.onEvent((e) => relay.publish("runner.netEvent", { event: e as unknown as Record<string, unknown> }));
    return relay;
  }

  /**
   * A restore from template `key` failed (`why`): the template goes (the
   * next create builds it anew) and the same sandbox boots cold, its ready
   * event saying why. Undefined (the failure told) when the cold boot fails too.
   */
  async #fallBackCold(key: string, why: string, failed?: Vm): Promise<Vm | undefined> {
    this.#log(`restoring template ${key.slice(0, 12)} failed: ${why}; booting cold`);
    if (failed) {
      this.#vm = undefined;
      failed.kill();
      await failed.exited;
    }
    await discardTemplate(key);
    try {
      await this.#netStarting;
      if (this.#net) {
        // netd serves exactly one VMM: the cold one gets a fresh netd (a restorable spec has no secrets).
        this.#net.kill();
        await this.#net.exited;
        await this.#startNet({ ...this.spec.netd!, secrets: [] });
      }
      this.clock.mark("vmm.restore.failed");
      const vm = await bootCold(
        this.spec,
        `the template could not be restored: ${why}`,
        this.#bootAbort.signal,
        this.log,
        { clock: this.clock },
      );
      this.#vm = vm;
      return vm;
    } catch (e) {
      await this.#bootFailure(e);
      return undefined;
    }
  }

  /** Boots through the spec's backend; undefined (the failure told) when it cannot. */
  async #boot(): Promise<Vm | undefined> {
    try {
      this.#bootStart = performance.now();
      let spec = this.spec;
      let netReady: Promise<unknown> | undefined;
      if (spec.netd) {
        const { netdSecrets } = await import("../net/engine.ts");
        const secrets = netdSecrets(spec.name, spec.secrets ?? [], this.#secretValues);
        // netd starts while the rest of the boot is prepared (the backend's code, the console, qemu's helpers, a
        // template's disk): the backend waits for it only where the VMM connects to it.
        const starting = this.#startNet({ ...spec.netd, secrets });
        this.#netStarting = starting.catch(() => undefined);
        if (secrets.length > 0) {
          // The guest trusts netd's CA: it reaches the VMM's boot config only, never vm.json.
          const net = await starting;
          if (!net.caPem) {
            throw new BackendUnavailableError(
              spec.backend,
              "netd sent no CA for a sandbox with secrets",
              `run ${setupCommand()} (it rebuilds netd)`,
            );
          }
          spec = { ...spec, caPem: net.caPem };
        }
        netReady = starting;
      }
      const [backend, consoleLog] = await Promise.all([
        this.spec.backend === "qemu"
          ? templatingBackend()
          : import("./libkrun.ts").then((m) => m.libkrunBackend as Backend),
        ConsoleLog.start(this.paths, settings.consoleMaxBytes()),
      ]);
      this.#console = consoleLog;
      this.clock.mark("runner.prepare");
      return this.#vm = await backend.boot(spec, this.#bootAbort.signal, this.log, { clock: this.clock, netReady });
    } catch (e) {
      if (e instanceof TemplateRestoreError) return await this.#fallBackCold(e.key, e.message);
      await this.#bootFailure(e);
      return undefined;
    }
  }

  /** A boot that threw: netd and the console end, the starter hears why. */
  async #bootFailure(e: unknown): Promise<void> {
    // A netd still starting (the boot failed before it waited for it) ends too.
    await this.#netStarting;
    this.#net?.kill();
    await this.#console?.[Symbol.asyncDispose]();
    const err = e instanceof KrunboxError ? e : new BackendUnavailableError(
      this.spec.backend,
      String((e as Error).message ?? e),
      `see ${this.paths.runnerLog}`,
      { cause: e },
    );
    this.#failBoot(err, `boot failed: ${err.message}`);
    this.#log(`boot failed: ${err.message}`);
  }

  /** Starts netd; its death while the VM lives turns the network off (logged), never the VM's traffic loose. */
  async #startNet(config: NonNullable<VmSpec["netd"]>): Promise<NetEngine> {
    const { NetEngine } = await import("./netd.ts");
    const net = await NetEngine.start(this.spec.backend, config, this.paths, this.log);
    this.#net = net;
    this.#log(`netd ${net.version} ready (pid ${net.pid})`);
    net.exited.then((s) => {
      if (this.#vm && this.#status !== "stopped" && this.#status !== "crashed" && !this.#orderly) {
        this.#log(`netd exited (code ${s.code}, signal ${s.signal}): the sandbox has no network from now on`);
      }
    });
    return net;
  }

  /** The agent's ready, or undefined (the VM killed, the failure told) when the VM exits or the boot times out. */
  async #awaitReady(vm: Vm, relay: Relay): Promise<ReadyParams | undefined> {
    const signal = this.#bootAbort.signal;
    const bootTimer = setTimeout(() => this.#bootAbort.abort(), this.spec.bootTimeoutMs);
    const ready = await Promise.race([
      relay.ready.then((f) => ({ ...(f.header.params as { boot: ReadyBoot }), receivedMs: epochMs() })),
      vm.exited.then(() => undefined),
      new Promise<undefined>((r) => signal.addEventListener("abort", () => r(undefined))),
    ]);
    clearTimeout(bootTimer);
    if (ready) return ready;
    this.#bootFailed = true;
    vm.kill();
    await vm.exited;
    const tail = await logTail(this.paths.consoleLog);
    const err = signal.aborted
      ? new BootTimeoutError(this.spec.name, this.spec.bootTimeoutMs, tail)
      : new VmCrashedError(this.spec.name, tail);
    this.#failBoot(err, `boot failed: ${err.code}`);
    return undefined;
  }

  /**
   * A guest restored from a template: its clock, entropy, hostname and env
   * set in one `guest.configure`; its ready is the template's with this
   * restore's time. Why not, when the guest does not answer (the runner
   * then boots cold: {@link Runner.#fallBackCold}).
   */
  async #configureRestored(
    vm: Vm,
    start: Extract<VmStart, { mode: "restored" }>,
    relay: Relay,
  ): Promise<ReadyParams | string> {
    try {
      // The clock (the saved guest's stood still), fresh host entropy for its kernel (siblings of one
      // template would otherwise draw the same random numbers), this sandbox's hostname and env.
      const configured = relay.requestGuest(
        "guest.configure",
        configureParams({
          hostname: this.spec.boot.hostname as string | undefined,
          env: this.spec.boot.env as Record<string, string> | undefined,
          time: true,
          seed: true,
        }),
        this.spec.bootTimeoutMs,
      );
      const reply = await Promise.race([
        configured,
        vm.exited.then((x) => Promise.reject(new Error(`qemu exited (code ${x.code}) while restoring`))),
      ]);
      if (reply.error) throw new Error(`guest.configure: ${reply.error.message}`);
    } catch (e) {
      return `the restored guest did not configure: ${(e as Error).message}`;
    }
    const restoredMs = Math.round(performance.now() - this.#bootStart);
    // No kernel or agent start of its own: the whole boot is the restore.
    const params: ReadyParams = {
      ...start.ready,
      boot: { kernelMs: 0, agentStartMs: 0, readyMs: restoredMs },
      receivedMs: epochMs(),
    };
    const { receivedMs: _, ...ready } = params;
    relay.adoptReady({ header: { jsonrpc: "2.0", method: "ready", params: ready }, attachment: new Uint8Array() });
    return params;
  }

  /** Once running: the owner's lifeline, the duration and idle limits, and signals, each a reason to stop. */
  #watch(): void {
    // Attached: the owner holds our stdin; EOF means it is gone.
    if (this.#attached) {
      (async () => {
        const buf = new Uint8Array(64);
        try {
          while ((await Deno.stdin.read(buf)) !== null) { /* owner alive */ }
        } catch {
          // treated as EOF
        }
        if (this.#attached) await this.stop("the owner exited");
      })();
    }
    if (this.spec.maxDurationSecs) {
      this.#timers.push(setTimeout(() => this.stop("max duration reached"), this.spec.maxDurationSecs * 1000));
    }
    if (this.spec.idleTimeoutSecs) {
      const idleMs = this.spec.idleTimeoutSecs * 1000;
      this.#timers.push(setInterval(() => {
        if (this.#relay!.idleMs >= idleMs) this.stop("idle timeout");
      }, DEFAULTS.idleCheckMs));
    }
    for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
      Deno.addSignalListener(sig, () => this.stop(`runner got ${sig}`));
    }
  }

  /** Answers the `runner.*` requests of host clients. */
  async #control(method: string, params: Record<string, unknown>): Promise<Record<string, unknown>> {
    switch (method) {
      case "runner.info":
        return {
          status: this.#status,
          vmmPid: this.#vm!.vmmPid,
          backend: this.spec.backend,
          attached: this.#attached,
          runningExecs: this.#relay!.runningExecs,
          network: !this.#net ? "none" : this.#net.running ? "up" : "down",
        };
      case "runner.netEvents":
        // The relay subscribed the caller; this is the backlog.
        return { events: this.#net?.recent() ?? [] };
      case "runner.netStats":
        return { stats: this.#net ? await this.#net.stats() : null };
      case "runner.stop":
        await this.stop("stopped by request", typeof params.graceMs === "number" ? params.graceMs : undefined);
        await this.#finished;
        return { status: this.#status };
      case "runner.kill":
        await this.kill("killed by request");
        await this.#finished;
        return { status: this.#status };
      case "runner.drain":
        this.drain();
        return { status: "draining" };
      case "runner.snapshot": {
        if (!this.#vm?.monitor || !this.#ready) {
          throw new Error("this sandbox cannot be snapshotted (qemu, OCI image only)");
        }
        await saveSnapshot(
          this.#vm.monitor,
          this.spec,
          String(params.name),
          this.#ready as unknown as Record<string, unknown>,
        );
        return { name: String(params.name) };
      }
      case "runner.detach":
        this.detach();
        return { detached: true };
      case "runner.rename":
        return { name: this.rename(params.name) };
      default:
        throw new Error(`unknown runner method ${method}`);
    }
  }

  /**
   * The guest's phases in host time, from its uptime at ready (CLOCK_BOOTTIME,
   * which starts with the kernel): the kernel started `readyMs` before the
   * ready frame arrived, and ran until the agent started (`agentStartMs`).
   * The VMM's start is the time from its exec (the backend's last mark) to
   * the kernel's start. The agent's own steps (`guest.<step>`) follow when
   * it reports them, then `guest.ready` (serving, and the frame's transit);
   * without them its whole start is `guest.agent`.
   */
  #guestPhases(ready: ReadyParams): void {
    const readyMs = ready.boot.readyMs ?? 0;
    const kernelStart = ready.receivedMs - readyMs;
    this.clock.mark("vmm.start", kernelStart);
    this.clock.mark("guest.kernel", kernelStart + (ready.boot.agentStartMs ?? 0));
    // The guest's word, so bounded: a few steps with plain names.
    const steps = (Array.isArray(ready.boot.steps) ? ready.boot.steps : []).filter((s) =>
      typeof s?.name === "string" && /^[a-z][a-z0-9_-]{0,31}$/.test(s.name) && Number.isFinite(s.endMs)
    ).slice(0, MAX_GUEST_STEPS);
    for (const s of steps) this.clock.mark(`guest.${s.name}`, kernelStart + s.endMs);
    this.clock.mark(steps.length ? "guest.ready" : "guest.agent", ready.receivedMs);
  }

  #bootMs(ready: ReadyParams): number {
    return ready.boot.readyMs ?? 0;
  }

  #log(m: string): void {
    this.log.line(m);
  }
}

async function main(dir: string, mode: "attached" | "detached", clock: PhaseClock): Promise<number> {
  clock.mark("runner.load");
  const paths = sandboxPaths(dir);
  const lock = tryLock(paths.runnerLock, true);
  if (!lock) {
    emitFailed(new StillRunningError(basename(dir)));
    return 3;
  }
  // Every writer of runner.log, this process's own stderr included, goes through one bounded log from here on.
  // Its close waits for queued lines at most DEFAULTS.logFlushMs: the exit never waits on the log.
  await using log = await RunnerLog.open(paths.runnerLog);
  log.captureStderr();
  // The runner holds secret values (on their way to netd) and its VMM holds the guest's memory: neither may end up
  // in a core file. Its children (netd, qemu, virtiofsd) inherit the hard limit of 0.
  const noCore = loadLibc()?.noCoreDumps() ?? -1;
  if (noCore !== 0) log.line(`core dumps stay possible (${noCore < 0 ? "no FFI" : errnoName(noCore)})`);
  try {
    const spec = JSON.parse(await Deno.readTextFile(paths.vmSpec)) as VmSpec;
    // With secrets, their values are the starter's first line on stdin (runner_secrets.ts).
    const values = spec.secrets?.length ? await readRunnerSecrets(Deno.stdin) : undefined;
    // The runner never opens the database: its status goes to a file the host merges (src/sandbox/state.ts).
    const status = new StatusFile(paths.statusFile, spec.name, mode === "detached");
    return await new Runner(spec, paths, status, mode === "attached", log, clock, values).run();
  } finally {
    lock.release();
  }
}

/** `runner.ts --warm`: loads what a runner loads, then exits (src/vmm/runner_cache.ts fills Deno's caches so). */
async function warmOnly(): Promise<number> {
  await Promise.all([import("./libkrun.ts"), import("./netd.ts"), import("../net/engine.ts")]);
  return 0;
}

if (import.meta.main) {
  const [dir, mode, spawnedAt] = Deno.args;
  if (dir === WARM_ARG) Deno.exit(await warmOnly());
  if (!dir || (mode !== "attached" && mode !== "detached")) {
    console.error("usage: runner.ts <sandbox dir> attached|detached [spawn time, epoch ms]");
    Deno.exit(2);
  }
  // From the starter's spawn to this process's start (Deno's own start included), then to here (the modules).
  const clock = new PhaseClock(Number(spawnedAt) || performance.timeOrigin);
  clock.mark("runner.start", performance.timeOrigin);
  Deno.exit(await main(dir, mode, clock));
}
