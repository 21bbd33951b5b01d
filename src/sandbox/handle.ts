/**
 * `SandboxHandle`: a stored sandbox, running or not, seen from any process.
 * It has lifecycle calls and metrics but no exec or fs: `connect()` gives a
 * `Sandbox` for those.
 *
 * @module
 */

import { AgentClient } from "../agent/client.ts";
import type { NetworkEvent } from "../net/engine.ts";
import { type NetworkEventsOptions, networkEventStream } from "./net_events.ts";
import { sampleMetrics, type SandboxMetrics } from "../metrics/snapshot.ts";
import type { SandboxRow } from "../store/db.ts";
import { openStore } from "../store/open.ts";
import { isPoolName, parseConfig, type SandboxConfig } from "./config.ts";
import type { Sandbox } from "./sandbox.ts";
import { notRunningError, pathsOf, reconciled, removeSandbox, requireRow, type SandboxStatus } from "./state.ts";
import { DEFAULTS } from "../settings.ts";

/**
 * A stored sandbox.
 *
 * @example
 * ```ts
 * import { Sandbox } from "@krunbox/krunbox";
 * for (const h of await Sandbox.list()) console.log(h.name, h.status); // e.g. job-1 running (nothing in a new state home)
 * ```
 */
export class SandboxHandle {
  /** The class `connect()` and `start()` return (sandbox.ts imports this module, so it is given, not imported). */
  readonly #sandbox: typeof Sandbox;

  /** @internal Use `Sandbox.get(name)` or `Sandbox.list()`. */
  constructor(row: SandboxRow, status: SandboxStatus, sandbox: typeof Sandbox) {
    this.#sandbox = sandbox;
    this.name = row.name;
    this.status = status;
    this.configJson = row.config;
    this.createdAt = row.createdAt;
    this.updatedAt = row.updatedAt;
    this.stopReason = row.stopReason;
  }

  /** The sandbox's name. */
  readonly name: string;
  /** The status when this handle was read. */
  readonly status: SandboxStatus;
  /** The persisted config, as JSON. */
  readonly configJson: string;
  /** When the sandbox was created. */
  readonly createdAt: Date;
  /** When its stored state (status, config, stop reason) last changed. */
  readonly updatedAt: Date;
  /** Why it last stopped (null while running). */
  readonly stopReason: string | null;

  /** The parsed config. */
  config(): SandboxConfig {
    return parseConfig(JSON.parse(this.configJson));
  }

  /** Connects to the running sandbox (not owning it). */
  async connect(): Promise<Sandbox> {
    const agent = await this.#connectAgent();
    const info = await agent.request("runner.info", {});
    return new this.#sandbox(this.config(), agent, info.result.vmmPid, undefined);
  }

  /** Boots the stopped sandbox, attached to this process. */
  start(): Promise<Sandbox> {
    return startSandbox(this.name, false, this.#sandbox);
  }

  /** Boots the stopped sandbox, detached. */
  startDetached(): Promise<Sandbox> {
    return startSandbox(this.name, true, this.#sandbox);
  }

  /** Stops it in order. */
  async stop(): Promise<void> {
    await using agent = await this.#connectAgent();
    await agent.request("runner.stop", {}).catch(() => {});
    await agent.closed;
  }

  /** Kills it at once. */
  async kill(): Promise<void> {
    using store = await openStore();
    const { killRunner } = await loadLaunch();
    await killRunner(store, requireRow(store, this.name));
  }

  /** Deletes it (it must be stopped). */
  remove(): Promise<void> {
    return removeSandbox(this.name);
  }

  /** One metrics sample (the CPU figure covers a short window). */
  async metrics(): Promise<SandboxMetrics> {
    await using agent = await this.#connectAgent();
    const info = await agent.request("runner.info", {});
    const cfg = this.config();
    const gone = (cause: unknown) => notRunningError(this.name, true, cause);
    return (await sampleMetrics(agent, info.result.vmmPid, cfg.cpus, cfg.memoryMib, undefined, gone)).metrics;
  }

  /**
   * The network engine's decisions, like `Sandbox.networkEvents()`, over a
   * connection of its own (closed when the iteration ends).
   *
   * @example
   * ```ts ignore
   * // Needs a running sandbox: tests/e2e/network_test.ts runs the same flow.
   * import { Sandbox } from "@krunbox/krunbox";
   * const h = await Sandbox.get("job-1");
   * for await (const e of h.networkEvents()) if (e.action === "denied") console.log(e.address, e.port);
   * ```
   */
  async *networkEvents(options: NetworkEventsOptions = {}): AsyncGenerator<NetworkEvent, void, undefined> {
    await using agent = await this.#connectAgent();
    yield* networkEventStream(agent, options);
  }

  async #connectAgent(): Promise<AgentClient> {
    try {
      return await AgentClient.connect(pathsOf(this.name).agentSocket, { timeoutMs: DEFAULTS.relayConnectMs });
    } catch (cause) {
      // The sandbox may still be booting: the store's status as it is.
      throw await notRunningError(this.name, false, cause);
    }
  }
}

/**
 * A handle on one stored sandbox; `sandbox` is the class its `connect()`
 * and `start()` return.
 *
 * @example
 * ```ts ignore
 * // Needs a stored sandbox, which needs a VM; tests/e2e/api_lifecycle_test.ts looks sandboxes up the same way.
 * import { Sandbox } from "@krunbox/krunbox";
 * import { getSandbox } from "./handle.ts";
 * console.log((await getSandbox("job-1", Sandbox)).status);
 * ```
 */
export async function getSandbox(name: string, sandbox: typeof Sandbox): Promise<SandboxHandle> {
  using store = await openStore();
  const { row, status } = reconciled(store, requireRow(store, name));
  return new SandboxHandle(row, status, sandbox);
}

/**
 * Handles on every stored sandbox but a warm pool's (not handed out yet:
 * internal names, {@link isPoolName}).
 *
 * @example
 * ```ts
 * import { Sandbox } from "@krunbox/krunbox";
 * import { listSandboxes } from "./handle.ts";
 * console.log((await listSandboxes(Sandbox)).length); // 0 in a new state home
 * ```
 */
export async function listSandboxes(sandbox: typeof Sandbox): Promise<SandboxHandle[]> {
  using store = await openStore();
  return store.list().filter((stored) => !isPoolName(stored.name)).map((stored) => {
    const { row, status } = reconciled(store, stored);
    return new SandboxHandle(row, status, sandbox);
  });
}

/**
 * Boots a stopped sandbox from its persisted config, as an instance of `sandbox`.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/api_lifecycle_test.ts ("start a stopped sandbox: …") starts one the same way.
 * import { Sandbox } from "@krunbox/krunbox";
 * import { startSandbox } from "./handle.ts";
 * const sb = await startSandbox("job-1", false, Sandbox);
 * await sb.stop();
 * ```
 */
export async function startSandbox(name: string, detached: boolean, sandbox: typeof Sandbox): Promise<Sandbox> {
  const { relaunch } = await loadLaunch();
  const { launched, config } = await relaunch(name, detached);
  const sb = sandbox.fromLaunch(config, launched, !detached);
  launched.clock.mark("host.finish");
  return sb;
}

/**
 * The boot code (image, VM spec, runner start) loaded when a call needs it,
 * so a program that only lists or execs never loads it (the CLI's `exec`
 * and `ls` start faster).
 */
export function loadLaunch(): Promise<typeof import("./launch.ts")> {
  return import("./launch.ts");
}
