/**
 * `Sandbox`: a connection to a running sandbox, with exec, fs, metrics and
 * lifecycle calls. Attached sandboxes own their VM: when the owner drops
 * them, exits or dies, the VM goes down. Detached ones outlive their creator.
 *
 * @module
 */

import type { AgentClient } from "../agent/client.ts";
import { type ExecOutput, ExecProcess, type ExecSpec, runToCompletion } from "../agent/exec.ts";
import { AgentError, InvalidConfigError, KrunboxError, NotRunningError } from "../errors.ts";
import { RPC_ERROR } from "../agent/rpc.ts";
import { type ProcessUsage, sampleMetrics, type SandboxMetrics } from "../metrics/snapshot.ts";
import { metricsStream } from "../metrics/stream.ts";
import { openStore } from "../store/open.ts";
import type { BootPhase, PhaseClock } from "../util/phases.ts";
import type { SandboxConfig } from "./config.ts";
import type { Launched } from "./launch.ts";
import { notRunningError, reconciled, removeSandbox } from "./state.ts";
import { SandboxFs } from "./fs.ts";
import { type NetworkEventsOptions, networkEventStream } from "./net_events.ts";
import type { NetworkEvent } from "../net/engine.ts";
import { SandboxBuilder } from "./builder.ts";
import { WarmPool } from "./pool.ts";
import { getSandbox, listSandboxes, type SandboxHandle, startSandbox } from "./handle.ts";

/** Options of `execWith`. */
export interface ExecOptions {
  /** Arguments after `cmd` (argv[1..]). */
  readonly args?: readonly string[];
  /** Merged over the sandbox's env. */
  readonly env?: Readonly<Record<string, string>>;
  /** Working directory (default: the sandbox's `workdir`, else `/`). */
  readonly cwd?: string;
  /** User name or uid (default: the sandbox's user). */
  readonly user?: string | number;
  /** Written to the process's stdin, then closed (strings as UTF-8); without it stdin is /dev/null. */
  readonly stdin?: Uint8Array | string | ReadableStream<Uint8Array>;
  /** Milliseconds; the process group is killed when it passes. */
  readonly timeout?: number;
  /** Aborting it kills the process group; the call rejects with `ExecAbortedError`. */
  readonly signal?: AbortSignal;
  /** Run on a pseudo-terminal (`true`: 24 rows × 80 columns); stdout and stderr are merged. */
  readonly tty?: boolean | { rows: number; cols: number };
  /**
   * Bytes collected per stream (stdout, stderr) before the process is killed
   * and the call rejects with `ExecOutputLimitError` (default 64 MiB,
   * `KRUNBOX_EXEC_MAX_OUTPUT_BYTES`). `execStream` has no such limit.
   */
  readonly maxOutputBytes?: number;
}

/** Options of `execStream`. */
export interface ExecStreamOptions extends Omit<ExecOptions, "stdin" | "maxOutputBytes"> {
  /** Open stdin as a writable stream. */
  readonly stdin?: boolean;
}

/** What `Sandbox.pool` keeps booted. */
export interface PoolOptions {
  /** How many sandboxes to keep ready (1 to 64). */
  readonly size: number;
  /** The image, as `SandboxBuilder.image` takes it (an OCI reference, a directory or a disk image). */
  readonly image: string;
  /** vCPUs (default 1). */
  readonly cpus?: number;
  /** MiB of memory (default 512). */
  readonly memory?: number;
  /**
   * The rest of the shape (network, volumes, ports, backend, user, workdir, …)
   * on a builder that already has `image`, `cpus` and `memory`. Its name,
   * hostname, env, patches and scripts are not used: those are each
   * sandbox's own. Secrets are refused.
   */
  readonly shape?: (b: SandboxBuilder) => SandboxBuilder;
  /**
   * Milliseconds from a handout to the refill boot it causes (default 100;
   * one timer for a burst of handouts): the boot's CPU burst then does not
   * land on the handout and the caller's first commands.
   */
  readonly refillDelayMs?: number;
}

/** How a sandbox ended. */
export interface ExitStatus {
  /** `crashed` when the VM or its runner ended without an orderly stop, else `stopped`. */
  readonly status: "stopped" | "crashed";
  /** True for an orderly stop. */
  readonly success: boolean;
  /** Why it stopped (e.g. "stopped by request", "idle timeout"). */
  readonly reason: string;
}

/**
 * A running sandbox.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/exec_fs_test.ts creates a sandbox and execs in it the same way.
 * import { Sandbox } from "@krunbox/krunbox";
 * await using sb = await Sandbox.builder("job-1").image("/srv/rootfs").create();
 * const out = await sb.exec("echo", ["hello"]);
 * console.log(out.stdout);
 * ```
 */
export class Sandbox implements AsyncDisposable {
  readonly #agent: AgentClient;
  readonly #config: SandboxConfig;
  #runner: Deno.ChildProcess | undefined;
  #lifeline: WritableStreamDefaultWriter<Uint8Array> | undefined;
  #owns: boolean;
  #vmmPid: number;
  #lastUsage: ProcessUsage | undefined;
  #fs: SandboxFs | undefined;
  #bootClock: PhaseClock | undefined;

  /** @internal Use `Sandbox.builder(…).create()`, `Sandbox.start` or `SandboxHandle.connect`. */
  constructor(config: SandboxConfig, agent: AgentClient, vmmPid: number, runner: Deno.ChildProcess | undefined) {
    this.#config = config;
    this.#agent = agent;
    this.#vmmPid = vmmPid;
    this.#runner = runner;
    this.#owns = runner !== undefined && !runner.stdin.locked;
    if (this.#owns) {
      // Our end of the runner's stdin is its lifeline: closed by the OS when this process dies.
      this.#lifeline = runner!.stdin.getWriter();
      runner!.unref();
    }
    agent.unrefWhenIdle();
  }

  /** A builder for a new sandbox; `name` must be unused (or call `replace()`). */
  static builder(name: string): SandboxBuilder {
    return new SandboxBuilder(name, {}, { sandbox: Sandbox });
  }

  /** A handle on a stored sandbox, running or stopped. */
  static get(name: string): Promise<SandboxHandle> {
    return getSandbox(name, Sandbox);
  }

  /** Handles on all stored sandboxes. */
  static list(): Promise<SandboxHandle[]> {
    return listSandboxes(Sandbox);
  }

  /**
   * A warm pool: keeps `size` sandboxes of one image and shape booted. From
   * then on an attached `create()` in this process whose config matches the
   * pool's (everything equal but name, hostname, env, patches and scripts)
   * is handed a ready sandbox instead of booting one: its name, hostname
   * and env are applied in one agent call, and it is the user's from then on
   * (listed, stopped, removed like any other; the pool does not stop it).
   * The pool refills in the background; a pooled sandbox that died is
   * replaced, never handed out; with none ready, `create()` boots cold.
   * Pooled sandboxes are not in `Sandbox.list` and are killed with the pool
   * (`await using`, or `close()`) or with this process. `createDetached()`
   * and `pullPolicy("always")` always boot cold. See src/sandbox/pool.ts.
   *
   * @example
   * ```ts ignore
   * // Needs VMs; tests/e2e/pool_test.ts runs the same.
   * import { Sandbox } from "@krunbox/krunbox";
   * await using pool = Sandbox.pool({ image: "/srv/rootfs", memory: 256, size: 3 });
   * await pool.ready(); // optional: creates before it boot cold
   * await using sb = await Sandbox.builder("job-1").image("/srv/rootfs").memory(256).env("MODE", "ci").create();
   * console.log((await sb.exec("hostname")).stdout); // job-1
   * ```
   */
  static pool(options: PoolOptions): WarmPool {
    let b = Sandbox.builder("pool").image(options.image).cpus(options.cpus ?? 1).memory(options.memory ?? 512);
    if (options.shape) b = options.shape(b);
    if (!(b instanceof SandboxBuilder)) throw new InvalidConfigError("pool.shape", "must return a SandboxBuilder");
    return new WarmPool(b.build(), options.size, options.refillDelayMs);
  }

  /** Deletes a stopped sandbox and its state. */
  static remove(name: string): Promise<void> {
    return removeSandbox(name);
  }

  /** Boots a stopped sandbox, attached to this process. */
  static start(name: string): Promise<Sandbox> {
    return startSandbox(name, false, Sandbox);
  }

  /** Boots a stopped sandbox, detached. */
  static startDetached(name: string): Promise<Sandbox> {
    return startSandbox(name, true, Sandbox);
  }

  /** @internal */
  static fromLaunch(config: SandboxConfig, launched: Launched, attached: boolean): Sandbox {
    const sb = new Sandbox(config, launched.agent, launched.ready.vmmPid, attached ? launched.runner : undefined);
    sb.#bootClock = launched.clock;
    return sb;
  }

  /**
   * Where the time of the `create()` or `start()` that booted this sandbox
   * went: contiguous phases from the call (`startMs` 0) to its return,
   * adding up to its wall time — the caller's (`host.*`), the runner's
   * (`runner.*`), the VMM's (`vmm.*`) and the guest's (`guest.kernel`,
   * `guest.agent`, from the guest's own uptime). Empty for a sandbox this
   * process connected to without booting it.
   */
  get bootPhases(): readonly BootPhase[] {
    return this.#bootClock?.phases ?? [];
  }

  /** The sandbox's name. */
  get name(): string {
    return this.#config.name;
  }

  /** The sandbox's configuration. */
  config(): SandboxConfig {
    return this.#config;
  }

  /** True when this object owns the VM's lifetime (attached). */
  ownsLifecycle(): boolean {
    return this.#owns;
  }

  /**
   * Saves this running sandbox (memory, processes, files) as snapshot
   * `name`, from which `Sandbox.builder(x).image(sameImage).fromSnapshot(name)`
   * forks new sandboxes; this one goes on after a short pause. qemu and OCI
   * image roots only.
   */
  async snapshot(name: string): Promise<void> {
    await this.#agent.request("runner.snapshot", { name });
  }

  /** Turns an attached sandbox into a detached one: it will outlive this process. */
  async detach(): Promise<void> {
    if (!this.#owns) return;
    await this.#agent.request("runner.detach", {});
    this.#owns = false;
    await this.#lifeline?.close().catch(() => {});
    this.#lifeline = undefined;
    this.#runner = undefined;
  }

  #spec(cmd: string, o: ExecOptions | ExecStreamOptions, stdin: boolean): ExecSpec {
    if (typeof cmd !== "string" || cmd.length === 0) {
      throw new InvalidConfigError("cmd", "must be a non-empty string");
    }
    return {
      cmd,
      args: o.args,
      env: o.env,
      cwd: o.cwd ?? this.#config.workdir,
      user: o.user ?? this.#config.user,
      tty: o.tty,
      stdin,
      timeoutMs: o.timeout,
      signal: o.signal,
    };
  }

  /** Runs a command to completion. */
  exec(cmd: string, args: readonly string[] = []): Promise<ExecOutput> {
    return this.execWith(cmd, { args });
  }

  /** Runs a command with options (env, cwd, user, stdin, timeout, signal, tty, maxOutputBytes). */
  async execWith(cmd: string, options: ExecOptions = {}): Promise<ExecOutput> {
    const max = options.maxOutputBytes;
    if (max !== undefined && !(Number.isSafeInteger(max) && max >= 0)) {
      throw new InvalidConfigError("maxOutputBytes", `must be a non-negative integer, got ${max}`);
    }
    return await this.#guard(() =>
      runToCompletion(this.#agent, this.#spec(cmd, options, options.stdin !== undefined), options.stdin, {
        maxOutputBytes: max,
      })
    );
  }

  /** Runs a script with the sandbox's shell (`shell -c script`). */
  shell(script: string, options: Omit<ExecOptions, "args"> = {}): Promise<ExecOutput> {
    return this.execWith(this.#config.shell, { ...options, args: ["-c", script] });
  }

  /** Starts a command and streams its output (Web Streams, or `for await` over events). */
  async execStream(cmd: string, options: ExecStreamOptions = {}): Promise<ExecProcess> {
    return await this.#guard(() => ExecProcess.start(this.#agent, this.#spec(cmd, options, options.stdin ?? false)));
  }

  /** The guest filesystem. */
  fs(): SandboxFs {
    return this.#fs ??= new SandboxFs(this.#agent);
  }

  /** One metrics sample. */
  async metrics(): Promise<SandboxMetrics> {
    return await this.#guard(async () => {
      const { metrics, usage } = await sampleMetrics(
        this.#agent,
        this.#vmmPid,
        this.#config.cpus,
        this.#config.memoryMib,
        this.#lastUsage,
        (cause) => this.#notRunning(cause),
      );
      this.#lastUsage = usage;
      return metrics;
    });
  }

  /** Samples every `intervalMs` until the sandbox stops, the loop breaks or `signal` aborts. */
  metricsStream(intervalMs: number, options: { signal?: AbortSignal } = {}): AsyncIterable<SandboxMetrics> {
    return metricsStream(() => this.metrics(), intervalMs, { signal: options.signal, closed: this.#agent.closed });
  }

  /**
   * The network engine's decisions (allowed, denied, secret substituted or
   * blocked): the recent ones the runner kept, then each new one, until the
   * sandbox stops, the loop breaks or `signal` aborts.
   *
   * @example
   * ```ts ignore
   * // Needs a VM: tests/e2e/network_test.ts runs the same flow.
   * import { Sandbox } from "@krunbox/krunbox";
   * await using sb = await Sandbox.builder("net").image("/srv/root").create();
   * for await (const e of sb.networkEvents()) {
   *   console.log(e.action, e.protocol, e.address, e.port, e.rule ?? e.reason);
   *   if (e.action === "denied") break;
   * }
   * ```
   */
  networkEvents(options: NetworkEventsOptions = {}): AsyncIterable<NetworkEvent> {
    if (this.#agent.isClosed) throw new NotRunningError(this.name, "stopped");
    return networkEventStream(this.#agent, options);
  }

  /** Asks the guest to shut down in order (returns once it has stopped). */
  async stop(): Promise<void> {
    await this.#control("runner.stop");
    await this.#ended();
  }

  /** Stops the sandbox and returns how it ended. */
  async stopAndWait(): Promise<ExitStatus> {
    await this.stop();
    return await this.wait();
  }

  /** Waits until the sandbox has stopped (for any reason) and returns how it ended. */
  async wait(): Promise<ExitStatus> {
    await this.#ended();
    using store = await openStore();
    const stored = store.get(this.name);
    // The runner's report merged (a crash written if it left none): the row as it ended.
    const seen = stored && reconciled(store, stored);
    const final = seen?.status === "crashed" ? "crashed" : "stopped";
    const reason = seen?.row.stopReason ?? "stopped";
    return { status: final, success: final === "stopped", reason };
  }

  /** Kills the VM at once. */
  async kill(): Promise<void> {
    await this.#control("runner.kill");
    await this.#ended();
  }

  /** Waits for the relay connection to end and, when we started it, the runner to exit. */
  async #ended(): Promise<void> {
    await this.#agent.waitClosed();
    if (this.#runner) {
      this.#runner.ref();
      await this.#runner.status;
    }
  }

  /** Refuses new execs, lets running ones finish, then stops. */
  async drain(): Promise<void> {
    await this.#control("runner.drain");
  }

  /** Stops the sandbox if needed and deletes its persisted state. */
  async removePersisted(): Promise<void> {
    if (!this.#agent.isClosed) await this.stop().catch(() => this.kill().catch(() => {}));
    await removeSandbox(this.name);
  }

  /** Attached: stop the VM (kill if it does not stop). Detached: disconnect only. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#owns && !this.#agent.isClosed) {
      await this.stop().catch(() => this.kill().catch(() => {}));
    }
    await this.#agent.close();
    await this.#lifeline?.close().catch(() => {});
  }

  async #control(method: "runner.stop" | "runner.kill" | "runner.drain"): Promise<void> {
    if (this.#agent.isClosed) return;
    try {
      await this.#agent.request(method, {});
    } catch (e) {
      if (!this.#agent.isClosed) throw e;
    }
  }

  /** Turns "the connection is gone" into a NotRunningError naming the state. */
  async #guard<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#agent.isClosed) throw await this.#notRunning();
    try {
      return await fn();
    } catch (e) {
      if (e instanceof AgentError && e.rpcCode === RPC_ERROR.SHUTTING_DOWN) {
        throw new NotRunningError(this.name, "draining", { cause: e });
      }
      if (this.#agent.isClosed && !(e instanceof KrunboxError && e.code !== "PROTOCOL")) {
        throw await this.#notRunning(e);
      }
      throw e;
    }
  }

  async #notRunning(cause?: unknown): Promise<NotRunningError> {
    try {
      return await notRunningError(this.name, true, cause);
    } catch {
      return new NotRunningError(this.name, "stopped", { cause });
    }
  }
}
