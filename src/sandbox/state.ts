/**
 * A sandbox's stored state: its directory, its row in the store, the status
 * a reader sees (reconciled with the runner's lock), the name lock that
 * serialises create, start and remove, and deleting it all.
 *
 * States: `creating` (booting) → `running` ⇄ `draining` → `stopped`;
 * any live state → `crashed` when the runner is gone without having written
 * a terminal status (its lock is free). The runner reports its status in
 * its own `status.json`, never in the database; every reader reconciles
 * (merging that report into the row), so a status change and a crash are
 * seen even if no caller was alive when they happened.
 *
 * @module
 */

import { join } from "node:path";
import { NotFoundError, NotRunningError, StateError, StillRunningError } from "../errors.ts";
import type { SandboxRow, Store } from "../store/db.ts";
import { homeLayout } from "../store/home.ts";
import { isLocked, lockWait } from "../store/lock.ts";
import { openStore } from "../store/open.ts";
import { privateDir } from "../store/private.ts";
import { type SandboxPaths, sandboxPaths } from "../vmm/backend.ts";
import { readRunnerStatus, type RunnerStatus } from "../vmm/status_file.ts";
import { DEFAULTS } from "../settings.ts";
import { isPoolName } from "./config.ts";

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

/** A row as a reader sees it: the runner's report merged, liveness checked. */
export interface Reconciled {
  /** The row after the merge (and after a crash was written, if one was). */
  readonly row: SandboxRow;
  readonly status: SandboxStatus;
}

function liveStored(status: SandboxRow["status"]): boolean {
  return status === "creating" || status === "running" || status === "draining";
}

/**
 * A stored sandbox as a reader sees it. While its row says it lives, the
 * runner's `status.json` (src/vmm/status_file.ts: the runner never opens
 * the database) is merged into that row and only that row; then a runner
 * whose lock is free without a terminal status is `crashed` (written back).
 * An invalid status file (a runner a guest may own wrote it) changes
 * nothing: while the runner lives the row stays as it was, once it is gone
 * the sandbox is `crashed` with the reason naming the file.
 *
 * @example
 * ```ts
 * import { openStore } from "../store/open.ts";
 * import { reconciled } from "./state.ts";
 * using store = await openStore();
 * for (const r of store.list()) console.log(r.name, reconciled(store, r).status); // e.g. job-1 stopped (nothing in a new state home)
 * ```
 */
export function reconciled(store: Store, stale: SandboxRow): Reconciled {
  if (!liveStored(stale.status)) return { row: stale, status: stale.status as SandboxStatus };
  // The row as it is now: another reader may have merged or ended it since `stale` was read.
  const row = store.get(stale.name) ?? stale;
  if (!liveStored(row.status)) return { row, status: row.status as SandboxStatus };
  const paths = pathsOf(row.name);
  // The lock first: a runner writes its terminal status before it releases the lock.
  const locked = isLocked(paths.runnerLock);
  let invalid: StateError | undefined;
  let current = row;
  try {
    const reported = readRunnerStatus(paths.statusFile, row.name);
    if (reported && differs(current, reported)) {
      const { status, stopReason, detached, bootMs } = reported;
      store.update(row.name, { status, stopReason, detached, ...(bootMs !== null ? { bootMs } : {}) });
      current = store.get(row.name) ?? row;
    }
  } catch (e) {
    if (!(e instanceof StateError)) throw e;
    invalid = e;
  }
  if (!liveStored(current.status)) return { row: current, status: current.status as SandboxStatus };
  if (locked) {
    return { row: current, status: current.status === "creating" ? "running" : current.status as SandboxStatus };
  }
  const stopReason = invalid ? invalid.message : "the runner disappeared without a clean stop";
  store.update(row.name, { status: "crashed", stopReason });
  return { row: store.get(row.name) ?? current, status: "crashed" };
}

function differs(row: SandboxRow, r: RunnerStatus): boolean {
  return row.status !== r.status || row.stopReason !== r.stopReason || row.detached !== r.detached ||
    (r.bootMs !== null && row.bootMs !== r.bootMs);
}

/**
 * The status of a stored sandbox ({@link reconciled}).
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
  return reconciled(store, row).status;
}

/**
 * The {@link NotRunningError} for sandbox `name`, with its status as the
 * store reconciles it now. With `ended` (its VMM or agent connection is known
 * to have ended), `running` means its runner still holds the lock while it
 * winds down, and is said as `stopping`. A sandbox no longer stored is
 * {@link NotFoundError}.
 *
 * @example
 * ```ts
 * import { notRunningError } from "./state.ts";
 * await notRunningError("no-such-sandbox", true).catch((e) => console.log(e.code)); // NOT_FOUND
 * ```
 */
export async function notRunningError(name: string, ended: boolean, cause?: unknown): Promise<NotRunningError> {
  using store = await openStore();
  const status = reconcile(store, requireRow(store, name));
  return new NotRunningError(name, ended && status === "running" ? "stopping" : status, { cause });
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
  const dir = pathsOf(name).dir;
  // A sandbox handed out by a warm pool: its name is a link to the pooled directory, which goes too.
  const target = await pooledTarget(dir);
  if (target) await removeTree(join(homeLayout().sandboxes, target));
  await removeTree(dir);
  store.delete(name);
}

async function removeTree(path: string): Promise<void> {
  await Deno.remove(path, { recursive: true }).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
}

/** The pooled directory a sandbox directory links to (a sibling's name), or undefined for a real directory. */
async function pooledTarget(dir: string): Promise<string | undefined> {
  const info = await Deno.lstat(dir).catch(() => undefined);
  if (!info?.isSymlink) return undefined;
  const target = await Deno.readLink(dir);
  return isPoolName(target) ? target : undefined;
}

/**
 * Points the directory of `name` at the directory of the pooled sandbox
 * `pooled` (a relative link between siblings of `sandboxes/`): the pooled
 * runner, VMM and helpers keep the paths they were started with, and every
 * path the library derives from the new name (sockets, locks, logs, disks)
 * reaches the same files. {@link deleteState} removes both. The caller holds
 * the name lock of `name`, which is not stored.
 *
 * @example
 * ```ts
 * import { linkPooledDir, pathsOf } from "./state.ts";
 * await Deno.mkdir(pathsOf(".pool-00000000000000aa").dir, { recursive: true });
 * await linkPooledDir("linked-doc", ".pool-00000000000000aa");
 * console.log(Deno.readLinkSync(pathsOf("linked-doc").dir)); // .pool-00000000000000aa
 * ```
 */
export async function linkPooledDir(name: string, pooled: string): Promise<void> {
  if (!isPoolName(pooled)) throw new StateError(`${pooled} is not a pooled sandbox`);
  await removeTree(pathsOf(name).dir);
  await Deno.symlink(pooled, pathsOf(name).dir);
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
