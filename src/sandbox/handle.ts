/**
 * `SandboxHandle`: a stored sandbox, running or not, seen from any process.
 * It has lifecycle calls and metrics but no exec or fs: `connect()` gives a
 * `Sandbox` for those.
 *
 * @module
 */

import { AgentClient } from "../agent/client.ts";
import { StillRunningError } from "../errors.ts";
import { sampleMetrics, type SandboxMetrics } from "../metrics/snapshot.ts";
import { NotRunningError } from "../errors.ts";
import { parseConfig, type SandboxConfig } from "./config.ts";
import {
  deleteState,
  killRunner,
  openStore,
  pathsOf,
  reconcile,
  relaunch,
  requireRow,
  type SandboxStatus,
  withNameLock,
} from "./lifecycle.ts";
import { Sandbox } from "./sandbox.ts";
import type { SandboxRow } from "../store/db.ts";

/**
 * A stored sandbox.
 *
 * @example
 * ```ts
 * import { Sandbox } from "@krunbox/krunbox";
 * for (const h of await Sandbox.list()) console.log(h.name, h.status);
 * ```
 */
export class SandboxHandle {
  /** @internal */
  constructor(row: SandboxRow, status: SandboxStatus) {
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
    return new Sandbox(this.config(), agent, info.result.vmmPid, undefined);
  }

  /** Boots the stopped sandbox, attached to this process. */
  start(): Promise<Sandbox> {
    return startSandbox(this.name, false);
  }

  /** Boots the stopped sandbox, detached. */
  startDetached(): Promise<Sandbox> {
    return startSandbox(this.name, true);
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
    return (await sampleMetrics(agent, info.result.vmmPid, cfg.cpus, cfg.memoryMib, undefined)).metrics;
  }

  async #connectAgent(): Promise<AgentClient> {
    try {
      return await AgentClient.connect(pathsOf(this.name).agentSocket, { timeoutMs: 10_000 });
    } catch (cause) {
      using store = await openStore();
      throw new NotRunningError(this.name, reconcile(store, requireRow(store, this.name)), { cause });
    }
  }
}

/**
 * A handle on one stored sandbox.
 *
 * @example
 * ```ts
 * import { getSandbox } from "./handle.ts";
 * console.log((await getSandbox("job-1")).status);
 * ```
 */
export async function getSandbox(name: string): Promise<SandboxHandle> {
  using store = await openStore();
  const row = requireRow(store, name);
  const status = reconcile(store, row);
  return new SandboxHandle(store.get(name) ?? row, status);
}

/**
 * Handles on every stored sandbox.
 *
 * @example
 * ```ts
 * import { listSandboxes } from "./handle.ts";
 * console.log((await listSandboxes()).length);
 * ```
 */
export async function listSandboxes(): Promise<SandboxHandle[]> {
  using store = await openStore();
  return store.list().map((row) => new SandboxHandle(row, reconcile(store, row)));
}

/**
 * Deletes a stopped sandbox's state; a running one is a {@link StillRunningError}.
 *
 * @example
 * ```ts
 * import { removeSandbox } from "./handle.ts";
 * await removeSandbox("job-1");
 * ```
 */
export async function removeSandbox(name: string): Promise<void> {
  using store = await openStore();
  await withNameLock(name, async () => {
    const row = requireRow(store, name);
    const status = reconcile(store, row);
    if (status === "running" || status === "draining") throw new StillRunningError(name);
    await deleteState(store, name);
  });
}

/**
 * Boots a stopped sandbox from its persisted config.
 *
 * @example
 * ```ts
 * import { startSandbox } from "./handle.ts";
 * const sb = await startSandbox("job-1", false);
 * ```
 */
export async function startSandbox(name: string, detached: boolean): Promise<Sandbox> {
  const { launched, config } = await relaunch(name, detached);
  return Sandbox.fromLaunch(config, launched, !detached);
}
