/**
 * The few libc calls krunbox needs and Deno has no API for: advisory locks
 * that can be tried without blocking (`flock`, for the sandbox locks),
 * extended attributes (tests read image xattrs back with them), and a
 * seccomp filter for a whole process (the qemu runner's, src/vmm/seccomp.ts).
 * One symbols table, C signature beside each entry. Opened lazily through the
 * one loader (ffi/load.ts; needs `--allow-ffi`); {@link loadLibc} answers
 * `undefined` where FFI is unavailable so callers can degrade.
 * Every call returns 0 on success or the positive `errno` on failure; a
 * string argument with a NUL byte throws a TypeError (as Deno's own file
 * APIs do) rather than reach C cut short.
 *
 * @module
 */

import { cstr } from "./cstring.ts";
import { OptionalLibrary } from "./load.ts";

const SYMBOLS = {
  // int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)
  lsetxattr: { parameters: ["buffer", "buffer", "buffer", "usize", "i32"], result: "i32", optional: true },
  // ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)
  lgetxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize", optional: true },
  // int open(const char *pathname, int flags, mode_t mode)
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  // int flock(int fd, int operation)
  flock: { parameters: ["i32", "i32"], result: "i32" },
  // int close(int fd)
  close: { parameters: ["i32"], result: "i32" },
  // int *__errno_location(void)
  __errno_location: { parameters: [], result: "pointer" },
  // int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)
  prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
  // long syscall(long number, ...): here seccomp(unsigned int operation, unsigned int flags, void *args)
  syscall: { parameters: ["i64", "u64", "u64", "buffer"], result: "i64" },
} as const satisfies Deno.ForeignLibraryInterface;

const ENOSYS = 38;
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  5: "EIO",
  7: "E2BIG",
  13: "EACCES",
  17: "EEXIST",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  28: "ENOSPC",
  30: "EROFS",
  34: "ERANGE",
  36: "ENAMETOOLONG",
  38: "ENOSYS",
  61: "ENODATA",
  95: "EOPNOTSUPP",
  122: "EDQUOT",
};

/**
 * `errno` of an unsupported operation (`EOPNOTSUPP`, also spelled `ENOTSUP`
 * on Linux), e.g. user xattrs on a filesystem without them.
 *
 * @example
 * ```ts
 * import { EOPNOTSUPP, loadLibc } from "./libc.ts";
 * const rc = loadLibc()?.setXattr("/tmp/f", "user.k", new Uint8Array([1]));
 * if (rc === EOPNOTSUPP) console.log("no user xattrs here"); // printed on filesystems without user xattrs (tmpfs)
 * ```
 */
export const EOPNOTSUPP = 95;

/**
 * `errno` of a missing extended attribute (`ENODATA`).
 *
 * @example
 * ```ts
 * import { ENODATA, loadLibc } from "./libc.ts";
 * const got = loadLibc()?.getXattr("/tmp/f", "user.absent");
 * if (got?.errno === ENODATA) console.log("not set"); // printed when /tmp/f exists without that xattr
 * ```
 */
export const ENODATA = 61;

/**
 * The symbolic name of an `errno` value, e.g. `EOPNOTSUPP` for 95.
 *
 * @example
 * ```ts
 * import { errnoName } from "./libc.ts";
 * console.log(errnoName(95)); // "EOPNOTSUPP"
 * ```
 */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/**
 * The libc calls of {@link loadLibc}; each returns 0 or a positive errno.
 *
 * @example
 * ```ts
 * import { errnoName, type Libc, loadLibc } from "./libc.ts";
 * const libc: Libc | undefined = loadLibc();
 * const rc = libc?.setXattr("/tmp/f", "user.k", new Uint8Array([1])) ?? -1;
 * console.log(rc === 0 ? "ok" : rc > 0 ? errnoName(rc) : "no FFI"); // ENOENT when /tmp/f does not exist
 * ```
 */
export interface Libc {
  /** `lsetxattr(2)`: sets an extended attribute without following a symlink at `path`. */
  setXattr(path: string, name: string, value: Uint8Array): number;
  /** `lgetxattr(2)`: the value, or the errno (`ENODATA` when absent). */
  getXattr(path: string, name: string): { value?: Uint8Array; errno: number };
  /** `open(2)` with `O_RDWR | O_CREAT | O_CLOEXEC`: a file descriptor, or minus the errno. */
  openForLock(path: string, mode: number): number;
  /** `flock(2)`: 0, or the errno (`EWOULDBLOCK` when held elsewhere with `LOCK_NB`). */
  flock(fd: number, operation: number): number;
  /** `close(2)`. */
  close(fd: number): void;
  /**
   * Sets `no_new_privs` and installs a classic-BPF seccomp filter (8-byte
   * `struct sock_filter` entries) on every thread of this process
   * (`SECCOMP_FILTER_FLAG_TSYNC`); children inherit it and it can never be
   * removed. 0, or the errno (`ESRCH` when a thread could not be synchronised).
   */
  installSeccompFilter(program: Uint8Array): number;
}

/** `flock(2)` operations. */
export const LOCK = { sh: 1, ex: 2, nb: 4, un: 8 } as const;
const O_RDWR = 0o2;
const O_CREAT = 0o100;
const O_CLOEXEC = 0o2000000;
const PR_SET_NO_NEW_PRIVS = 38;
const SYS_SECCOMP = 317n; // x86_64
const SECCOMP_SET_MODE_FILTER = 1n;
const SECCOMP_FILTER_FLAG_TSYNC = 1n;

/**
 * libc itself (glibc's soname), opened on first use.
 *
 * @example
 * ```ts
 * import { libcLibrary } from "./libc.ts";
 * console.log(libcLibrary.load() ? `libc at ${libcLibrary.path}` : libcLibrary.errors().join("; ")); // libc at libc.so.6
 * ```
 */
export const libcLibrary: OptionalLibrary<typeof SYMBOLS> = new OptionalLibrary(undefined, "libc.so.6", SYMBOLS);

let cached: Libc | undefined;

/**
 * Opens libc once; `undefined` where FFI is not permitted or libc cannot be
 * loaded.
 *
 * @example
 * ```ts
 * import { loadLibc } from "./libc.ts";
 * const libc = loadLibc();
 * if (libc) console.log(libc.setXattr("/tmp/f", "user.k", new Uint8Array([1]))); // 0 or an errno
 * ```
 */
export function loadLibc(): Libc | undefined {
  if (cached) return cached;
  const lib = libcLibrary.load();
  if (!lib) return undefined;
  const s = lib.symbols;
  const errno = (): number => {
    const p = s.__errno_location();
    return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
  };
  const check = (rc: number | bigint): number => (Number(rc) < 0 ? errno() || ENOSYS : 0);
  cached = {
    setXattr: (path, name, value) =>
      s.lsetxattr ? check(s.lsetxattr(cstr(path), cstr(name), value, BigInt(value.length), 0)) : ENOSYS,
    getXattr(path, name) {
      if (!s.lgetxattr) return { errno: ENOSYS };
      const p = cstr(path);
      const n = cstr(name);
      for (let attempt = 0; attempt < 4; attempt++) {
        const size = Number(s.lgetxattr(p, n, null, 0n));
        if (size < 0) return { errno: errno() || ENOSYS };
        const buf = new Uint8Array(size);
        const got = Number(s.lgetxattr(p, n, buf, BigInt(size)));
        if (got >= 0) return { value: buf.subarray(0, got), errno: 0 };
        const e = errno();
        if (e !== 34 /* ERANGE: grew meanwhile */) return { errno: e || ENOSYS };
      }
      return { errno: 34 };
    },
    openForLock(path, mode) {
      const fd = s.open(cstr(path), O_RDWR | O_CREAT | O_CLOEXEC, mode);
      return fd < 0 ? -(errno() || ENOSYS) : fd;
    },
    flock: (fd, operation) => check(s.flock(fd, operation)),
    close: (fd) => void s.close(fd),
    installSeccompFilter(program) {
      if (program.length === 0 || program.length % 8 !== 0 || program.length / 8 > 4096) return 22; // EINVAL
      if (s.prctl(PR_SET_NO_NEW_PRIVS, 1n, 0n, 0n, 0n) < 0) return errno() || ENOSYS;
      // struct sock_fprog { unsigned short len; struct sock_filter *filter; } (16 bytes on x86_64)
      const fprog = new Uint8Array(16);
      const view = new DataView(fprog.buffer);
      view.setUint16(0, program.length / 8, true);
      view.setBigUint64(8, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(program))), true);
      const rc = s.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, fprog);
      // With TSYNC a positive result is the id of a thread that could not be synchronised.
      return rc < 0n ? errno() || ENOSYS : rc > 0n ? 3 /* ESRCH */ : 0;
    },
  };
  return cached;
}
