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
import { type SandboxPaths, sandboxPaths, type Vm, type VmExit, type VmSpec } from "./backend.ts";
import { listenFresh } from "./channel.ts";
import { ConsoleLog } from "./console.ts";
import { NetEngine } from "./netd.ts";
import { qemuBackend } from "./qemu.ts";
import { Relay } from "./relay.ts";
import { StatusFile } from "./status_file.ts";

/** The lines a runner prints on stdout for its starter. */
export type RunnerEvent =
  | { event: "ready"; bootMs: number; boot: Record<string, number>; vmmPid: number }
  /** `error` is the error itself ({@link errorToWire}): the starter rethrows the same class with the same fields. */
  | { event: "failed"; code: string; message: string; error?: WireError };

/** The agent's `ready` parameters the runner reads. */
interface ReadyParams {
  readonly boot: Record<string, number>;
}

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
  /** The guest console's bounded copy on the host (drained from the VMM's FIFO). */
  #console?: ConsoleLog;
  #finished?: Promise<void>;

  /** A runner for `spec`; `attached` when an owner holds its stdin. */
  constructor(
    readonly spec: VmSpec,
    readonly paths: SandboxPaths,
    readonly store: StatusFile,
    attached: boolean,
  ) {
    this.#attached = attached;
  }

  /** The status last written. */
  get status(): StoredStatus {
    return this.#status;
  }

  /** Boots the VM and serves until it is gone; resolves with the process's exit code. */
  async run(): Promise<number> {
    const vm = await this.#boot();
    if (!vm) return 1;
    // The terminal status is written before any client hears that the VM is gone.
    this.#finished = vm.exited.then((exit) => this.#exited(exit));
    const relay = this.#relay = new Relay(vm.agent, (method, params) => this.#control(method, params));
    this.#net?.onEvent((e) => relay.publish("runner.netEvent", { event: e as unknown as Record<string, unknown> }));
    const listener = await listenFresh(this.paths.agentSocket);
    try {
      const ready = await this.#awaitReady(vm, relay);
      if (!ready) return 1;
      await this.#running(vm, ready);
      relay.serve(listener);
      emit({ event: "ready", bootMs: this.#bootMs(ready), boot: ready.boot, vmmPid: vm.vmmPid });
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
  async #running(vm: Vm, ready: ReadyParams): Promise<void> {
    await vm.booted?.();
    const bootMs = this.#bootMs(ready);
    this.store.update({ bootMs });
    this.#log(
      `ready: kernel ${ready.boot.kernelMs} ms, agent start ${ready.boot.agentStartMs} ms, ready ${bootMs} ms`,
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

  /** Boots through the spec's backend; undefined (the failure told) when it cannot. */
  async #boot(): Promise<Vm | undefined> {
    try {
      const backend = this.spec.backend === "qemu" ? qemuBackend : (await import("./libkrun.ts")).libkrunBackend;
      this.#console = await ConsoleLog.start(this.paths, settings.consoleMaxBytes());
      if (this.spec.netd) this.#net = await this.#startNet(this.spec.netd);
      return this.#vm = await backend.boot(this.spec, this.#bootAbort.signal);
    } catch (e) {
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
      return undefined;
    }
  }

  /** Starts netd; its death while the VM lives turns the network off (logged), never the VM's traffic loose. */
  async #startNet(config: NonNullable<VmSpec["netd"]>): Promise<NetEngine> {
    const net = await NetEngine.start(this.spec.backend, config, this.paths);
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
      relay.ready.then((f) => f.header.params as unknown as ReadyParams),
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
      case "runner.detach":
        this.detach();
        return { detached: true };
      default:
        throw new Error(`unknown runner method ${method}`);
    }
  }

  #bootMs(ready: ReadyParams): number {
    return ready.boot.readyMs ?? 0;
  }

  #log(m: string): void {
    Deno.writeTextFileSync(this.paths.runnerLog, `${new Date().toISOString()} ${m}\n`, { append: true });
  }
}

async function main(dir: string, mode: "attached" | "detached"): Promise<number> {
  const paths = sandboxPaths(dir);
  const lock = tryLock(paths.runnerLock, true);
  if (!lock) {
    emitFailed(new StillRunningError(basename(dir)));
    return 3;
  }
  try {
    const spec = JSON.parse(await Deno.readTextFile(paths.vmSpec)) as VmSpec;
    const status = new StatusFile(paths.statusFile, spec.name, mode === "detached");
    return await new Runner(spec, paths, status, mode === "attached").run();
  } finally {
    lock.release();
  }
}

if (import.meta.main) {
  const [dir, mode] = Deno.args;
  if (!dir || (mode !== "attached" && mode !== "detached")) {
    console.error("usage: runner.ts <sandbox dir> attached|detached");
    Deno.exit(2);
  }
  Deno.exit(await main(dir, mode));
}
