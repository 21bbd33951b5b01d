/**
 * `SandboxFs`: the guest filesystem calls plus copies between host and guest.
 *
 * Copies are race-free against a hostile guest (who may also share the host
 * directory through a volume and change it while the copy runs). The host
 * side is walked from directory descriptors (ffi/libc.ts): every component is
 * opened with `openat(dirfd, name, O_NOFOLLOW|O_DIRECTORY)`, so no path is
 * ever resolved again after it was checked, and what was `fstatat`-ed before
 * an open is compared by dev/ino after it. The rules:
 *
 * - Guest names `""`, `.`, `..` and names holding `/` or NUL are refused
 *   (`FsError` `EINVAL` naming the entry).
 * - `copyToHost` creates every file with `O_CREAT|O_EXCL|O_NOFOLLOW`: an
 *   existing host file is never replaced or written through (`EEXIST`;
 *   remove it first). An existing real directory is merged into; a host
 *   symlink where a directory goes is refused (`ELOOP`).
 * - A guest symlink is recreated on the host only when it cannot lead out
 *   of the destination tree: its target is relative, is some `../` steps
 *   (at most as many as the link is deep below the destination) followed by
 *   names without `..`. Any other link (absolute, escaping, or the copied
 *   path itself being a link) is skipped and listed in
 *   {@link CopyReport.skipped}. Fifos, sockets and devices are skipped too.
 *   Files and directories lose setuid, setgid and sticky bits.
 * - `copyFromHost` reads host files through descriptors opened with
 *   `O_NOFOLLOW`; a host symlink is recreated in the guest as a link (its
 *   text, never what it points at on the host).
 * - A copy stops with `FsError` `EFBIG` past `maxBytes`
 *   (`KRUNBOX_COPY_MAX_BYTES`) and `E2BIG` past `maxEntries`
 *   (`KRUNBOX_COPY_MAX_ENTRIES`); `signal` ends it at once (a deadline:
 *   `AbortSignal.timeout(ms)`); each guest request has its `timeoutMs`.
 * A copy that fails leaves what it finished; a half-written host file is
 * removed.
 *
 * @module
 */

import { basename, dirname, resolve } from "node:path";
import { FsError } from "../errors.ts";
import { type FsCallOptions, type FsEntry, GuestFs } from "../agent/fs.ts";
import { AT_FDCWD, errnoName, type FileStat, type Libc, loadLibc, O, S_IF, S_IFMT } from "../../ffi/libc.ts";
import { settings } from "../settings.ts";

/**
 * Options of `copyToHost` and `copyFromHost`.
 *
 * @example
 * ```ts
 * import type { CopyOptions } from "./fs.ts";
 * const o: CopyOptions = { signal: AbortSignal.timeout(60_000), maxBytes: 1 << 30, maxEntries: 10_000 };
 * console.log(o.maxEntries); // 10000
 * ```
 */
export interface CopyOptions extends FsCallOptions {
  /** Bytes of file data the copy may move (default `KRUNBOX_COPY_MAX_BYTES`, 16 GiB); past it `FsError` `EFBIG`. */
  readonly maxBytes?: number;
  /** Entries the copy may visit (default `KRUNBOX_COPY_MAX_ENTRIES`, 1,000,000); past it `FsError` `E2BIG`. */
  readonly maxEntries?: number;
}

/** An entry a copy left out, and why. */
export interface SkippedEntry {
  /** The entry's path on the side it was read from. */
  readonly path: string;
  /** What it is (`symlink`, `fifo`, …). */
  readonly kind: string;
  /** The link text, for a symlink. */
  readonly target?: string;
  /** Why it was left out. */
  readonly reason: string;
}

/** What a copy did. */
export interface CopyReport {
  /** Regular files copied. */
  readonly files: number;
  /** Directories created or merged into. */
  readonly dirs: number;
  /** Symlinks recreated. */
  readonly symlinks: number;
  /** Bytes of file data moved. */
  readonly bytes: number;
  /** Entries left out (links that could lead out of the destination, devices, fifos, sockets). */
  readonly skipped: readonly SkippedEntry[];
}

const CHUNK = 1 << 20;
const NO_SPECIAL_BITS = 0o777;

function failure(errno: number, path: string, hint?: string): FsError {
  const name = errnoName(errno);
  return new FsError(name.startsWith("E") ? name : "EIO", path, hint ? { cause: new Error(hint) } : undefined);
}

function isStat(s: FileStat | { errno: number }): s is FileStat {
  return s.errno === 0;
}

/** Refuses a name that is not one component. */
function checkName(name: unknown, parent: string): string {
  if (typeof name !== "string" || name === "" || name === "." || name === ".." || /[/\0]/.test(name)) {
    throw new FsError("EINVAL", `${parent}/${typeof name === "string" ? name : String(name)}`, {
      cause: new TypeError(`not a single path component: ${JSON.stringify(name)}`),
    });
  }
  return name;
}

/**
 * Whether a link at `depth` directories below the destination root, pointing
 * at `target`, resolves inside the tree whatever the other links in it are:
 * only leading `..` steps (each lands on a real directory this copy created
 * or merged into), no more than `depth`, then names without `..`.
 */
export function linkStaysInside(target: string, depth: number): boolean {
  if (depth < 0 || target === "" || target.startsWith("/") || target.includes("\0")) return false;
  const parts = target.split("/").filter((p) => p !== "" && p !== ".");
  let up = 0;
  while (up < parts.length && parts[up] === "..") up++;
  return up <= depth && !parts.slice(up).includes("..");
}

class Walk {
  files = 0;
  dirs = 0;
  symlinks = 0;
  bytes = 0;
  entries = 0;
  readonly skipped: SkippedEntry[] = [];
  readonly maxBytes: number;
  readonly maxEntries: number;
  readonly call: FsCallOptions;

  constructor(readonly libc: Libc, readonly options: CopyOptions) {
    this.maxBytes = options.maxBytes ?? settings.copyMaxBytes();
    this.maxEntries = options.maxEntries ?? settings.copyMaxEntries();
    this.call = { signal: options.signal, timeoutMs: options.timeoutMs };
  }

  entry(path: string): void {
    this.options.signal?.throwIfAborted();
    if (++this.entries > this.maxEntries) {
      throw new FsError("E2BIG", path, {
        cause: new RangeError(
          `the copy visits more than ${this.maxEntries} entries (maxEntries, KRUNBOX_COPY_MAX_ENTRIES)`,
        ),
      });
    }
  }

  add(n: number, path: string): void {
    this.options.signal?.throwIfAborted();
    this.bytes += n;
    if (this.bytes > this.maxBytes) {
      throw new FsError("EFBIG", path, {
        cause: new RangeError(`the copy moves more than ${this.maxBytes} bytes (maxBytes, KRUNBOX_COPY_MAX_BYTES)`),
      });
    }
  }

  report(): CopyReport {
    const { files, dirs, symlinks, bytes, skipped } = this;
    return { files, dirs, symlinks, bytes, skipped };
  }

  /** Opens `name` in `dirfd` and checks it is what `before` described (same dev/ino). */
  openSame(dirfd: number, name: string, flags: number, before: FileStat, path: string): number {
    const fd = this.libc.openAt(dirfd, name, flags | O.nofollow);
    if (fd < 0) throw failure(-fd, path);
    const after = this.libc.fstat(fd);
    if (!isStat(after) || after.dev !== before.dev || after.ino !== before.ino) {
      this.libc.close(fd);
      throw new FsError("ESTALE", path, { cause: new Error("the host entry was replaced while it was copied") });
    }
    return fd;
  }

  /** Opens the directory that will hold `hostPath` (the caller's own path: links in it are followed). */
  openParent(hostPath: string): { dirfd: number; name: string; path: string } {
    const path = resolve(hostPath);
    if (path === "/") throw new FsError("EINVAL", hostPath, { cause: new Error("copy to or from a path below /") });
    const dirfd = this.libc.openAt(AT_FDCWD, dirname(path), O.rdonly | O.directory);
    if (dirfd < 0) throw failure(-dirfd, dirname(path));
    return { dirfd, name: basename(path), path };
  }
}

function needLibc(path: string): Libc {
  const libc = loadLibc();
  if (!libc) {
    throw new FsError("ENOSYS", path, { cause: new Error("copies need libc through FFI: run with --allow-ffi") });
  }
  return libc;
}

/**
 * The filesystem of a running sandbox.
 *
 * @example
 * ```ts ignore
 * // Needs a VM; tests/e2e/exec_fs_test.ts copies files in and out the same way.
 * import { Sandbox } from "@krunbox/krunbox";
 * await using sb = await Sandbox.builder("fs-demo").image("/srv/rootfs").create();
 * await sb.fs().write("/tmp/a.txt", "hello");
 * const report = await sb.fs().copyToHost("/tmp/a.txt", "/tmp/from-guest.txt");
 * console.log(report.files, report.skipped);
 * ```
 */
export class SandboxFs extends GuestFs {
  /**
   * Copies a host file or directory tree into the guest, reading the host
   * through `O_NOFOLLOW` descriptors; host symlinks become guest symlinks.
   */
  async copyFromHost(hostPath: string, guestPath: string, options: CopyOptions = {}): Promise<CopyReport> {
    const walk = new Walk(needLibc(hostPath), options);
    const { dirfd, name, path } = walk.openParent(hostPath);
    try {
      await this.#copyIn(walk, dirfd, name, path, guestPath);
    } finally {
      walk.libc.close(dirfd);
    }
    return walk.report();
  }

  /**
   * Copies a guest file or directory tree to the host, never outside
   * `hostPath` and never through a host symlink; see the module notes for
   * which guest symlinks are recreated.
   */
  async copyToHost(guestPath: string, hostPath: string, options: CopyOptions = {}): Promise<CopyReport> {
    const walk = new Walk(needLibc(hostPath), options);
    const { dirfd, name, path } = walk.openParent(hostPath);
    try {
      walk.entry(guestPath);
      const top = await this.stat(guestPath, walk.call);
      await this.#copyOut(walk, top, guestPath, dirfd, name, path, -1);
    } finally {
      walk.libc.close(dirfd);
    }
    return walk.report();
  }

  async #copyIn(walk: Walk, dirfd: number, name: string, hostPath: string, guestPath: string): Promise<void> {
    const { libc } = walk;
    walk.entry(hostPath);
    const st = libc.fstatAt(dirfd, name);
    if (!isStat(st)) throw failure(st.errno, hostPath);
    const type = st.mode & S_IFMT;
    if (type === S_IF.lnk) {
      const link = libc.readlinkAt(dirfd, name);
      if (link.value === undefined) throw failure(link.errno, hostPath);
      await this.symlink(link.value, guestPath, walk.call);
      walk.symlinks++;
    } else if (type === S_IF.dir) {
      const fd = walk.openSame(dirfd, name, O.rdonly | O.directory, st, hostPath);
      try {
        await this.mkdir(guestPath, { ...walk.call, mode: st.mode & NO_SPECIAL_BITS });
        walk.dirs++;
        // The directory is listed through its descriptor: /proc/self/fd/N is the open directory itself.
        const names: string[] = [];
        for await (const e of Deno.readDir(`/proc/self/fd/${fd}`)) {
          walk.entry(`${hostPath}/${e.name}`);
          names.push(checkName(e.name, hostPath));
        }
        walk.entries -= names.length; // counted again when each is copied
        for (const child of names.sort()) {
          await this.#copyIn(walk, fd, child, `${hostPath}/${child}`, `${guestPath.replace(/\/$/, "")}/${child}`);
        }
      } finally {
        libc.close(fd);
      }
    } else if (type === S_IF.reg) {
      const fd = walk.openSame(dirfd, name, O.rdonly | O.nonblock, st, hostPath);
      try {
        const w = this.writeStream(guestPath, { ...walk.call, mode: st.mode & NO_SPECIAL_BITS }).getWriter();
        try {
          for (;;) {
            const buf = new Uint8Array(CHUNK);
            const n = await libc.read(fd, buf);
            if (n < 0) throw failure(-n, hostPath);
            if (n === 0) break;
            walk.add(n, hostPath);
            await w.write(buf.subarray(0, n));
          }
          await w.close();
        } catch (e) {
          await w.abort(e).catch(() => {});
          throw e;
        }
        walk.files++;
      } finally {
        libc.close(fd);
      }
    } else {
      walk.skipped.push({ path: hostPath, kind: kindOf(type), reason: "only files, directories and links are copied" });
    }
  }

  /**
   * Copies guest `entry` (at `guestPath`) to `name` in host directory
   * `dirfd`; `depth` is how deep `dirfd` is below the destination root (-1:
   * `dirfd` is the root's parent).
   */
  async #copyOut(
    walk: Walk,
    entry: FsEntry,
    guestPath: string,
    dirfd: number,
    name: string,
    hostPath: string,
    depth: number,
  ): Promise<void> {
    const { libc } = walk;
    if (entry.kind === "symlink") {
      const target = typeof entry.target === "string" ? entry.target : "";
      if (!linkStaysInside(target, depth)) {
        walk.skipped.push({
          path: guestPath,
          kind: "symlink",
          target,
          reason: depth < 0
            ? "the copied path is itself a link"
            : "its target is absolute or leads outside the destination",
        });
        return;
      }
      const rc = libc.symlinkAt(target, dirfd, name);
      if (rc !== 0) throw failure(rc, hostPath, rc === 17 ? "an existing host entry is never replaced" : undefined);
      walk.symlinks++;
    } else if (entry.kind === "dir") {
      const mode = entry.mode & NO_SPECIAL_BITS;
      const made = libc.mkdirAt(dirfd, name, 0o700);
      if (made !== 0 && made !== 17 /* EEXIST: merge into a real directory */) throw failure(made, hostPath);
      const st = libc.fstatAt(dirfd, name);
      if (!isStat(st)) throw failure(st.errno, hostPath);
      if ((st.mode & S_IFMT) !== S_IF.dir) {
        throw new FsError((st.mode & S_IFMT) === S_IF.lnk ? "ELOOP" : "ENOTDIR", hostPath, {
          cause: new Error("the host has a non-directory (or a symlink) where the guest has a directory"),
        });
      }
      const fd = walk.openSame(dirfd, name, O.rdonly | O.directory, st, hostPath);
      try {
        walk.dirs++;
        const children = await this.list(guestPath, walk.call);
        for (const child of children) {
          const childName = checkName(child.name, guestPath);
          walk.entry(`${guestPath}/${childName}`);
          await this.#copyOut(
            walk,
            child,
            `${guestPath.replace(/\/$/, "")}/${childName}`,
            fd,
            childName,
            `${hostPath}/${childName}`,
            depth + 1,
          );
        }
        if (made === 0) {
          const rc = libc.fchmod(fd, mode);
          if (rc !== 0) throw failure(rc, hostPath);
        }
      } finally {
        libc.close(fd);
      }
    } else if (entry.kind === "file") {
      const fd = libc.openAt(dirfd, name, O.wronly | O.creat | O.excl | O.nofollow, 0o600);
      if (fd < 0) {
        throw failure(
          -fd,
          hostPath,
          -fd === 17 ? "an existing host file is never replaced: remove it first" : undefined,
        );
      }
      let done = false;
      try {
        for await (const chunk of this.readStream(guestPath, walk.call)) {
          walk.add(chunk.length, hostPath);
          const rc = await libc.writeAll(fd, chunk);
          if (rc !== 0) throw failure(rc, hostPath);
        }
        const rc = libc.fchmod(fd, entry.mode & NO_SPECIAL_BITS);
        if (rc !== 0) throw failure(rc, hostPath);
        done = true;
        walk.files++;
      } finally {
        libc.close(fd);
        // The half-written file is this copy's own (O_EXCL); unlinkat removes the name, following nothing.
        if (!done) libc.unlinkAt(dirfd, name);
      }
    } else {
      walk.skipped.push({ path: guestPath, kind: entry.kind, reason: "only files, directories and links are copied" });
    }
  }
}

function kindOf(type: number): string {
  return ({ 0o010000: "fifo", 0o020000: "char", 0o060000: "block", 0o140000: "socket" } as Record<number, string>)[
    type
  ] ?? "unknown";
}
