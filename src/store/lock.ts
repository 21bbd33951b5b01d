/**
 * Advisory file locks (`flock(2)` through libc, see ffi/libc.ts). A runner
 * holds an exclusive lock on its sandbox's `runner.lock` for its whole life:
 * the kernel drops it when the process dies, however it dies, so "is the
 * runner alive?" is a non-blocking lock attempt, immune to pid reuse.
 * Deno's own `FsFile.lock` only blocks, hence libc (needs `--allow-ffi`).
 *
 * @module
 */

import { type Libc, loadLibc, LOCK } from "../../ffi/libc.ts";
import { StateError } from "../errors.ts";
import { PRIVATE_FILE_MODE } from "./private.ts";

function libc(): Libc {
  const l = loadLibc();
  if (!l) throw new StateError("krunbox needs FFI for its locks: run Deno with --allow-ffi (or -A)");
  return l;
}

/**
 * A held lock; `release()` (or `using`) frees it.
 *
 * @example
 * ```ts
 * import { tryLock } from "./lock.ts";
 * using lock = tryLock("/tmp/x.lock", true);
 * console.log(lock ? "mine" : "someone else has it"); // mine (nobody else holds it)
 * ```
 */
export class FileLock implements Disposable {
  #fd: number;
  constructor(fd: number) {
    this.#fd = fd;
  }
  /** Releases the lock and closes its descriptor. */
  release(): void {
    if (this.#fd < 0) return;
    libc().flock(this.#fd, LOCK.un);
    libc().close(this.#fd);
    this.#fd = -1;
  }
  [Symbol.dispose](): void {
    this.release();
  }
}

/**
 * Takes a lock without waiting; `undefined` when another holder has it.
 *
 * @example
 * ```ts
 * import { tryLock } from "./lock.ts";
 * const l = tryLock("/tmp/y.lock", true);
 * l?.release();
 * ```
 */
export function tryLock(path: string, exclusive: boolean): FileLock | undefined {
  const fd = libc().openForLock(path, PRIVATE_FILE_MODE);
  if (fd < 0) throw new StateError(`cannot open lock file ${path} (errno ${-fd}); check that KRUNBOX_HOME is writable`);
  if (libc().flock(fd, (exclusive ? LOCK.ex : LOCK.sh) | LOCK.nb) !== 0) {
    libc().close(fd);
    return undefined;
  }
  return new FileLock(fd);
}

/**
 * Takes an exclusive lock, waiting up to `timeoutMs` (polling, every few
 * milliseconds at first and at most every 100 ms later; locks such as a
 * sandbox name are held briefly, an image being pulled for longer).
 * Rejects with the signal's reason when `signal` aborts first.
 *
 * @example
 * ```ts
 * import { lockWait } from "./lock.ts";
 * using l = await lockWait("/tmp/z.lock", 1000);
 * ```
 */
export async function lockWait(path: string, timeoutMs: number, signal?: AbortSignal): Promise<FileLock | undefined> {
  const end = Date.now() + timeoutMs;
  for (let delay = 5;; delay = Math.min(delay * 1.5, 100)) {
    signal?.throwIfAborted();
    const l = tryLock(path, true);
    if (l || Date.now() >= end) return l;
    await new Promise((r) => setTimeout(r, delay + Math.random() * delay));
  }
}

/**
 * Whether someone holds a lock on the file (a missing file is unlocked).
 *
 * @example
 * ```ts
 * import { isLocked } from "./lock.ts";
 * console.log(isLocked("/tmp/x.lock")); // false (nobody holds it)
 * ```
 */
export function isLocked(path: string): boolean {
  try {
    Deno.statSync(path);
  } catch {
    return false;
  }
  const l = tryLock(path, false);
  if (!l) return true;
  l.release();
  return false;
}
