/**
 * The few libc calls krunbox needs and Deno has no API for: advisory locks
 * that can be tried without blocking (`flock`, for the sandbox locks),
 * extended attributes (tests read image xattrs back with them), and a
 * seccomp filter for a whole process (the qemu runner's, src/vmm/seccomp.ts),
 * `dup2` (the runner's stderr follows its bounded log, src/util/bounded_log.ts),
 * and the `*at` calls that walk a host tree from directory descriptors
 * without following links (`openat`, `mkdirat`, `fstatat`, `symlinkat`,
 * `readlinkat`, `unlinkat`, plus `fstat`, `fchmod`, `read`, `write`: the
 * race-free copies of src/sandbox/fs.ts).
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
  // int dup2(int oldfd, int newfd)
  dup2: { parameters: ["i32", "i32"], result: "i32" },
  // int *__errno_location(void)
  __errno_location: { parameters: [], result: "pointer" },
  // int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)
  prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
  // int setrlimit(int resource, const struct rlimit *rlim)
  setrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  // long syscall(long number, ...): here seccomp(unsigned int operation, unsigned int flags, void *args)
  syscall: { parameters: ["i64", "u64", "u64", "buffer"], result: "i64" },
  // int mkfifo(const char *pathname, mode_t mode)
  mkfifo: { parameters: ["buffer", "u32"], result: "i32" },
  // int openat(int dirfd, const char *pathname, int flags, mode_t mode)
  openat: { parameters: ["i32", "buffer", "i32", "u32"], result: "i32" },
  // int mkdirat(int dirfd, const char *pathname, mode_t mode)
  mkdirat: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // int fstat(int fd, struct stat *statbuf)
  fstat: { parameters: ["i32", "buffer"], result: "i32" },
  // int fstatat(int dirfd, const char *pathname, struct stat *statbuf, int flags)
  fstatat: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  // int fchmod(int fd, mode_t mode)
  fchmod: { parameters: ["i32", "u32"], result: "i32" },
  // int symlinkat(const char *target, int newdirfd, const char *linkpath)
  symlinkat: { parameters: ["buffer", "i32", "buffer"], result: "i32" },
  // ssize_t readlinkat(int dirfd, const char *pathname, char *buf, size_t bufsiz)
  readlinkat: { parameters: ["i32", "buffer", "buffer", "usize"], result: "isize" },
  // int unlinkat(int dirfd, const char *pathname, int flags)
  unlinkat: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // ssize_t read(int fd, void *buf, size_t count): on a worker thread (a file on a slow disk must not stall the loop)
  read: { parameters: ["i32", "buffer", "usize"], result: "isize", nonblocking: true },
  // ssize_t pread(int fd, void *buf, size_t count, off_t offset); blocking: regular files only
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  // ssize_t write(int fd, const void *buf, size_t count): on a worker thread
  write: { parameters: ["i32", "buffer", "usize"], result: "isize", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;

const ENOSYS = 38;
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  9: "EBADF",
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
  39: "ENOTEMPTY",
  40: "ELOOP",
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
  /** `dup2(2)`: makes `newfd` refer to what `oldfd` does (without close-on-exec); 0 or the errno. */
  dup2(oldfd: number, newfd: number): number;
  /**
   * Sets `no_new_privs` and installs a classic-BPF seccomp filter (8-byte
   * `struct sock_filter` entries) on every thread of this process
   * (`SECCOMP_FILTER_FLAG_TSYNC`); children inherit it and it can never be
   * removed. 0, or the errno (`ESRCH` when a thread could not be synchronised).
   */
  installSeccompFilter(program: Uint8Array): number;
  /**
   * No core dump of this process or of any it starts: `RLIMIT_CORE` 0, soft
   * and hard (children cannot raise it), and `PR_SET_DUMPABLE` 0 (which also
   * keeps same-uid ptrace out). 0, or the first errno.
   */
  noCoreDumps(): number;
  /**
   * `openat(2)` of `path` relative to the directory `dirfd` ({@link AT_FDCWD}
   * for the working directory) with {@link O} flags (`O_CLOEXEC` always
   * added): a file descriptor, or minus the errno. With `O.nofollow` a
   * final symlink fails with `ELOOP` (`ENOTDIR` with `O.directory`).
   */
  openAt(dirfd: number, path: string, flags: number, mode?: number): number;
  /** `mkfifo(3)`: creates a FIFO at `path` with `mode`; 0 or the errno (`EEXIST` if the name is taken). */
  mkfifo(path: string, mode: number): number;
  /** `mkdirat(2)`: 0 or the errno (`EEXIST` also when a symlink has that name; it is not followed). */
  mkdirAt(dirfd: number, name: string, mode: number): number;
  /** `fstat(2)`: what an open descriptor is. */
  fstat(fd: number): FileStat | { errno: number };
  /** `fstatat(2)`; `follow: false` (the default) stats a final symlink itself (`AT_SYMLINK_NOFOLLOW`). */
  fstatAt(dirfd: number, path: string, follow?: boolean): FileStat | { errno: number };
  /** `fchmod(2)`: 0 or the errno. */
  fchmod(fd: number, mode: number): number;
  /** `symlinkat(2)`: creates `name` in `dirfd` pointing at `target`; 0 or the errno (`EEXIST` if taken). */
  symlinkAt(target: string, dirfd: number, name: string): number;
  /** `readlinkat(2)`: the link text, or the errno (`EINVAL` when not a link). */
  readlinkAt(dirfd: number, name: string): { value?: string; errno: number };
  /** `unlinkat(2)`; `dir: true` removes an empty directory (`AT_REMOVEDIR`). 0 or the errno. */
  unlinkAt(dirfd: number, name: string, dir?: boolean): number;
  /** `pread(2)` on this thread (for regular files: it does not wait on a peer): bytes read (0 at the end), or minus the errno. */
  pread(fd: number, buf: Uint8Array, offset: number): number;
  /** `read(2)` on a worker thread: bytes read (0 at the end), or minus the errno. */
  read(fd: number, buf: Uint8Array): Promise<number>;
  /** `write(2)` of all of `buf` (short writes retried) on a worker thread: 0 or the errno. */
  writeAll(fd: number, buf: Uint8Array): Promise<number>;
}

/** What `fstat`/`fstatAt` answer (from `struct stat`). */
export interface FileStat {
  /** `st_dev`. */
  readonly dev: bigint;
  /** `st_ino`. */
  readonly ino: bigint;
  /** `st_nlink`: how many names the file has. */
  readonly nlink: number;
  /** `st_mode`: type and permission bits (see {@link S_IFMT}). */
  readonly mode: number;
  /** `st_size`. */
  readonly size: number;
  /** Always 0 (a stat that worked). */
  readonly errno: 0;
}

/** `openat(2)` flags (x86_64 / generic Linux values). */
export const O = {
  rdonly: 0,
  wronly: 0o1,
  creat: 0o100,
  excl: 0o200,
  append: 0o2000,
  nonblock: 0o4000,
  directory: 0o200000,
  nofollow: 0o400000,
  /** `O_PATH`: a descriptor naming the entry, opening nothing (no FIFO waits, no device opened). */
  path: 0o10000000,
  cloexec: 0o2000000,
} as const;
/** `dirfd` meaning the working directory. */
export const AT_FDCWD = -100;
/** The file-type bits of `st_mode` and their values. */
export const S_IFMT = 0o170000;
/** `st_mode & S_IFMT` of a directory, regular file and symlink. */
export const S_IF = { dir: 0o040000, reg: 0o100000, lnk: 0o120000 } as const;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_REMOVEDIR = 0x200;
const STAT_SIZE = 144; // sizeof(struct stat) on x86_64

/** `flock(2)` operations. */
export const LOCK = { sh: 1, ex: 2, nb: 4, un: 8 } as const;
const O_RDWR = 0o2;
const O_CREAT = 0o100;
const O_CLOEXEC = 0o2000000;
const PR_SET_NO_NEW_PRIVS = 38;
const PR_SET_DUMPABLE = 4;
const RLIMIT_CORE = 4;
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

function statOf(buf: Uint8Array): FileStat {
  // struct stat on x86_64: st_dev @0, st_ino @8, st_nlink @16, st_mode @24 (u32), st_size @48.
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  return {
    dev: v.getBigUint64(0, true),
    ino: v.getBigUint64(8, true),
    nlink: Number(v.getBigUint64(16, true)),
    mode: v.getUint32(24, true),
    size: Number(v.getBigInt64(48, true)),
    errno: 0,
  };
}

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
    dup2: (oldfd, newfd) => check(s.dup2(oldfd, newfd)),
    noCoreDumps() {
      // struct rlimit { rlim_t rlim_cur; rlim_t rlim_max; }: both 0.
      const rc = check(s.setrlimit(RLIMIT_CORE, new Uint8Array(16)));
      return rc || check(s.prctl(PR_SET_DUMPABLE, 0n, 0n, 0n, 0n));
    },
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
    openAt(dirfd, path, flags, mode = 0) {
      const fd = s.openat(dirfd, cstr(path), flags | O.cloexec, mode);
      return fd < 0 ? -(errno() || ENOSYS) : fd;
    },
    mkdirAt: (dirfd, name, mode) => check(s.mkdirat(dirfd, cstr(name), mode)),
    mkfifo: (path, mode) => check(s.mkfifo(cstr(path), mode)),
    fstat(fd) {
      const buf = new Uint8Array(STAT_SIZE);
      return s.fstat(fd, buf) < 0 ? { errno: errno() || ENOSYS } : statOf(buf);
    },
    fstatAt(dirfd, path, follow = false) {
      const buf = new Uint8Array(STAT_SIZE);
      const rc = s.fstatat(dirfd, cstr(path), buf, follow ? 0 : AT_SYMLINK_NOFOLLOW);
      return rc < 0 ? { errno: errno() || ENOSYS } : statOf(buf);
    },
    fchmod: (fd, mode) => check(s.fchmod(fd, mode)),
    symlinkAt: (target, dirfd, name) => check(s.symlinkat(cstr(target), dirfd, cstr(name))),
    readlinkAt(dirfd, name) {
      const p = cstr(name);
      // PATH_MAX bytes hold any link text Linux stores; one more tells a full buffer from a cut one.
      const buf = new Uint8Array(4097);
      const n = Number(s.readlinkat(dirfd, p, buf, BigInt(buf.length)));
      if (n < 0) return { errno: errno() || ENOSYS };
      if (n >= buf.length) return { errno: 36 /* ENAMETOOLONG */ };
      return { value: new TextDecoder().decode(buf.subarray(0, n)), errno: 0 };
    },
    unlinkAt: (dirfd, name, dir = false) => check(s.unlinkat(dirfd, cstr(name), dir ? AT_REMOVEDIR : 0)),
    pread(fd, buf, offset) {
      const n = Number(s.pread(fd, buf, BigInt(buf.length), BigInt(offset)));
      return n >= 0 ? n : -(errno() || 5);
    },
    async read(fd, buf) {
      // errno is per thread: a nonblocking call's errno is read on another thread, so a failure
      // is re-derived with fstat here (EBADF) or reported as EIO.
      const n = Number(await s.read(fd, buf, BigInt(buf.length)));
      return n >= 0 ? n : -(s.fstat(fd, new Uint8Array(STAT_SIZE)) < 0 ? errno() || 5 : 5);
    },
    async writeAll(fd, buf) {
      for (let off = 0; off < buf.length;) {
        const part = buf.subarray(off);
        const n = Number(await s.write(fd, part, BigInt(part.length)));
        if (n < 0) return s.fstat(fd, new Uint8Array(STAT_SIZE)) < 0 ? errno() || 5 : 5;
        off += n;
      }
      return 0;
    },
  };
  return cached;
}
