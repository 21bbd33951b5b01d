/**
 * The runner's side of one sandbox's network engine (netd/PROTOCOL.md,
 * "Process"): {@link NetEngine.start} starts `netd` under
 * `setpriv --pdeathsig KILL` (a {@link ChildGroup}), writes the spec's
 * compiled configuration line to its stdin and keeps stdin open (EOF makes
 * netd close every flow and exit: fail closed), reads its stdout with
 * {@link NetdLineStream}, and resolves once netd said `ready` (its frame
 * socket listens), so the VMM is started only after it.
 *
 * Decisions (`event` lines) go into a bounded ring of recent events and to
 * every listener; `stats` answers the runner's `{"cmd":"stats"}` requests.
 * If netd dies while the VM runs, the VMM's network backend loses its peer:
 * nothing the guest sends leaves the VM from then on (neither qemu 7.2's
 * stream client nor libkrun reconnects), and the runner reports the network
 * as `down`.
 *
 * @module
 */

import { setupCommand } from "../setup_command.ts";
import { BackendUnavailableError } from "../errors.ts";
import {
  netdCommand,
  type NetdConfig,
  netdConfigLine,
  NetdLineStream,
  type NetStats,
  type NetworkEvent,
} from "../net/engine.ts";
import { DEFAULTS } from "../settings.ts";
import { assetPath } from "../store/assets.ts";
import { logTail } from "../util/logs.ts";
import type { SandboxPaths } from "./backend.ts";
import { ChildGroup } from "./children.ts";
import type { BackendKind } from "./detect.ts";
import type { RunnerLog } from "./runner_log.ts";

/** Receives each decision netd reports. */
export type NetEventListener = (event: NetworkEvent) => void;

/**
 * One running netd.
 *
 * @example
 * ```ts
 * import { NetEngine } from "./netd.ts";
 * // using net = await NetEngine.start("qemu", spec.netd!, sandboxPaths(spec.dir), runnerLog);
 * // console.log((await net.stats()).connections);
 * ```
 */
export class NetEngine implements Disposable {
  readonly #children: ChildGroup;
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #ring: NetworkEvent[] = [];
  readonly #listeners = new Set<NetEventListener>();
  readonly #statsWaiters: ((s: NetStats) => void)[] = [];
  #running = true;
  /** The version netd reported in its `ready` line. */
  version = "";
  /** The sandbox CA netd reported in its `ready` line (only with secrets). */
  caPem: string | undefined;
  /** Resolves when netd has exited (for whatever reason). */
  readonly exited: Promise<Deno.CommandStatus>;

  private constructor(children: ChildGroup, child: Deno.ChildProcess) {
    this.#children = children;
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.exited = child.status.then((s) => {
      this.#running = false;
      for (const w of this.#statsWaiters.splice(0)) w({ rxBytes: 0, txBytes: 0, connections: 0, flows: 0 });
      return s;
    });
  }

  /**
   * Starts netd for `config` and waits for its `ready` line; fails with
   * netd's own words (its `error` line or its log) when it exits first or
   * takes longer than `DEFAULTS.netdReadyMs`.
   */
  static async start(
    backend: BackendKind,
    config: NetdConfig,
    paths: SandboxPaths,
    runnerLog: RunnerLog,
  ): Promise<NetEngine> {
    await Deno.mkdir(paths.netDir, { recursive: true, mode: 0o700 });
    await Deno.chmod(paths.netDir, 0o700);
    await Deno.remove(paths.netSocket).catch(() => {});
    const children = new ChildGroup(backend, runnerLog);
    const child = children.spawnPiped(assetPath("netd"), []);
    const engine = new NetEngine(children, child);
    const log = (m: string) => runnerLog.line(`netd: ${m}`);
    let onReady!: () => void;
    const ready = new Promise<void>((r) => (onReady = r));
    const errors: string[] = [];
    engine.#read(onReady, (m) => {
      errors.push(m);
      log(m);
    }, log);
    try {
      await engine.#stdin.write(new TextEncoder().encode(netdConfigLine(config)));
    } catch {
      // netd exited before reading its configuration: the wait below says why
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const outcome = await Promise.race([
      ready.then(() => "ready" as const),
      engine.exited.then(() => "exited" as const),
      new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), DEFAULTS.netdReadyMs))),
    ]);
    clearTimeout(timer);
    if (outcome === "ready") return engine;
    engine.kill();
    const status = await engine.exited;
    if (errors.length === 0) await runnerLog.flush();
    const why = errors.length > 0 ? errors.join("; ") : await logTail(runnerLog.path, 5);
    throw new BackendUnavailableError(
      backend,
      outcome === "timeout"
        ? `netd did not become ready within ${DEFAULTS.netdReadyMs} ms`
        : `netd exited at start (code ${status.code}): ${why}`,
      `see ${runnerLog.path}; ${setupCommand()} builds netd`,
    );
  }

  /** True until netd exits. */
  get running(): boolean {
    return this.#running;
  }

  /** The pid of netd (its setpriv wrapper execs it). */
  get pid(): number {
    return this.#child.pid;
  }

  /** The most recent events, oldest first (at most `DEFAULTS.netEventRing`). */
  recent(): NetworkEvent[] {
    return [...this.#ring];
  }

  /** Calls `listener` for every later event; returns the unsubscribe function. */
  onEvent(listener: NetEventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** netd's counters now (zeros once netd is gone). */
  async stats(): Promise<NetStats> {
    if (!this.#running) return { rxBytes: 0, txBytes: 0, connections: 0, flows: 0 };
    const answer = new Promise<NetStats>((r) => this.#statsWaiters.push(r));
    await this.#stdin.write(new TextEncoder().encode(netdCommand("stats")));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) =>
      timer = setTimeout(
        () => reject(new Error(`netd did not answer stats within ${DEFAULTS.netdStatsMs} ms`)),
        DEFAULTS.netdStatsMs,
      )
    );
    try {
      return await Promise.race([answer, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Kills netd at once (the guest's network ends with it). */
  kill(): void {
    this.#children.kill();
  }

  /** Kills netd. */
  [Symbol.dispose](): void {
    this.kill();
  }

  async #read(onReady: () => void, onError: (m: string) => void, log: (m: string) => void): Promise<void> {
    try {
      for await (const m of this.#child.stdout.pipeThrough(new NetdLineStream())) {
        switch (m.type) {
          case "ready":
            this.version = m.version;
            this.caPem = m.caPem;
            onReady();
            break;
          case "event":
            this.#ring.push(m.event);
            if (this.#ring.length > DEFAULTS.netEventRing) this.#ring.shift();
            for (const l of this.#listeners) l(m.event);
            break;
          case "stats":
            this.#statsWaiters.shift()?.(m.stats);
            break;
          case "error":
            onError(m.message);
            break;
          case "invalid":
            log(m.error.message);
            break;
        }
      }
    } catch {
      // netd's stdout closed
    }
  }
}
