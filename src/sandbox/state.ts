/**
 * A sandbox's stored state: its directory, its row in the store, the status
 * a reader sees (reconciled with the runner's lock), the name lock that
 * serialises create, start and remove, and deleting it all.
 *
 * States: `creating` (booting) → `running` ⇄ `draining` → `stopped`;
 * any live state → `crashed` when the runner is gone without having written
 * a terminal status (its lock is free). Every reader reconciles, so a crash
 * is seen even if no caller was alive when it happened.
 *
 * @module
 */

import { join } from "node:path";
import { NotFoundError, StateError, StillRunningError } from "../errors.ts";
import type { SandboxRow, Store } from "../store/db.ts";
import { homeLayout } from "../store/home.ts";
import { isLocked, lockWait } from "../store/lock.ts";
import { openStore } from "../store/open.ts";
import { privateDir } from "../store/private.ts";
import { type SandboxPaths, sandboxPaths } from "../vmm/backend.ts";
import { DEFAULTS } from "../settings.ts";

/** The status a reader sees. */
export type SandboxStatus = "running" | "draining" | "stopped" | "crashed";

/** How long to wait for another process holding a sandbox name. */
const NAME_LOCK_MS = DEFAULTS.nameLockMs;

/**
 * The directory files of a sandbox.
 *
 * @example
 * ```ts
 * import { pathsOf } from "./state.ts";
 * console.log(pathsOf("job-1").consoleLog.endsWith("/sandboxes/job-1/console.log")); // true
 * ```
 */
export function pathsOf(name: string): SandboxPaths {
  return sandboxPaths(join(homeLayout().sandboxes, name));
}

/** Whether a status means a runner owns the VM (start and remove refuse it). */
export function isLive(status: SandboxStatus): boolean {
  return status === "running" || status === "draining";
}

/**
 * The status of a stored sandbox, reconciled with its runner's lock (and
 * written back when it changed).
 *
 * @example
 * ```ts
 * import { openStore } from "../store/open.ts";
 * import { reconcile } from "./state.ts";
 * using store = await openStore();
 * for (const row of store.list()) console.log(row.name, reconcile(store, row)); // e.g. job-1 stopped (nothing in a new state home)
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
 * import { NotFoundError } from "../errors.ts";
 * import { openStore } from "../store/open.ts";
 * import { requireRow } from "./state.ts";
 * using store = await openStore();
 * try {
 *   requireRow(store, "no-such-sandbox");
 * } catch (e) {
 *   console.log(e instanceof NotFoundError); // true
 * }
 * ```
 */
export function requireRow(store: Store, name: string): SandboxRow {
  const row = store.get(name);
  if (!row) throw new NotFoundError("sandbox", name);
  return row;
}

/**
 * Deletes a stopped sandbox's state (row and directory). The caller holds
 * the name lock.
 *
 * @example
 * ```ts
 * import { openStore } from "../store/open.ts";
 * import { deleteState, withNameLock } from "./state.ts";
 * using store = await openStore();
 * await withNameLock("never-made", () => deleteState(store, "never-made")); // nothing to delete: no error
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
 * import { withNameLock } from "./state.ts";
 * console.log(await withNameLock("job-1", () => Promise.resolve("locked, then released"))); // locked, then released
 * ```
 */
export async function withNameLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
  await privateDir(homeLayout().sandboxes);
  const lock = await lockWait(pathsOf(name).nameLock, NAME_LOCK_MS);
  if (!lock) throw new StateError(`sandbox "${name}" is locked by another process for over ${NAME_LOCK_MS} ms`);
  try {
    return await fn();
  } finally {
    lock.release();
  }
}

/**
 * Deletes a stopped sandbox's state; a running one is a {@link StillRunningError}.
 *
 * @example
 * ```ts
 * import { NotFoundError } from "../errors.ts";
 * import { removeSandbox } from "./state.ts";
 * await removeSandbox("no-such-sandbox").catch((e) => console.log(e instanceof NotFoundError)); // true
 * ```
 */
export async function removeSandbox(name: string): Promise<void> {
  using store = await openStore();
  await withNameLock(name, async () => {
    const row = requireRow(store, name);
    if (isLive(reconcile(store, row))) throw new StillRunningError(name);
    await deleteState(store, name);
  });
}
