/**
 * Advisory file locks (`flock(2)` through libc). A runner holds an exclusive
 * lock on its sandbox's `runner.lock` for its whole life: the kernel drops it
 * when the process dies, however it dies, so "is the runner alive?" is a
 * non-blocking lock attempt, immune to pid reuse. Deno's own `FsFile.lock`
 * only blocks, hence libc (needs `--allow-ffi`).
 *
 * @module
 */

const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
const O_RDWR = 0o2;
const O_CREAT = 0o100;
const O_CLOEXEC = 0o2000000;

const LIBC_SYMBOLS = {
  // int open(const char *pathname, int flags, mode_t mode)
  open: {
    parameters: ["buffer", /* const char *pathname */ "i32", /* int flags */ "u32" /* mode_t mode */],
    result: "i32",
  },
  // int flock(int fd, int operation)
  flock: { parameters: ["i32", /* int fd */ "i32" /* int operation */], result: "i32" },
  // int close(int fd)
  close: { parameters: ["i32" /* int fd */], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

let libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS> | undefined;
function lib() {
  return libc ??= Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
}

/**
 * A held lock; `release()` (or `using`) frees it.
 *
 * @example
 * ```ts
 * import { tryLock } from "./lock.ts";
 * using lock = tryLock("/tmp/x.lock", true);
 * console.log(lock ? "mine" : "someone else has it");
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
    lib().symbols.flock(this.#fd, LOCK_UN);
    lib().symbols.close(this.#fd);
    this.#fd = -1;
  }
  [Symbol.dispose](): void {
    this.release();
  }
}

function openLockFile(path: string): number {
  const fd = lib().symbols.open(new TextEncoder().encode(path + "\0"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644);
  if (fd < 0) throw new Deno.errors.PermissionDenied(`cannot open lock file ${path}`);
  return fd;
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
  const fd = openLockFile(path);
  if (lib().symbols.flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) !== 0) {
    lib().symbols.close(fd);
    return undefined;
  }
  return new FileLock(fd);
}

/**
 * Takes an exclusive lock, waiting up to `timeoutMs` (polling, for locks
 * that are held briefly such as a sandbox name during create or remove).
 *
 * @example
 * ```ts
 * import { lockWait } from "./lock.ts";
 * using l = await lockWait("/tmp/z.lock", 1000);
 * ```
 */
export async function lockWait(path: string, timeoutMs: number): Promise<FileLock | undefined> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const l = tryLock(path, true);
    if (l || Date.now() >= end) return l;
    await new Promise((r) => setTimeout(r, 5 + Math.random() * 10));
  }
}

/**
 * Whether someone holds a lock on the file (a missing file is unlocked).
 *
 * @example
 * ```ts
 * import { isLocked } from "./lock.ts";
 * console.log(isLocked("/tmp/x.lock"));
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
