/**
 * Host file access in a directory another process may write: a sandbox's
 * directory, which its runner (a process a guest may own, see DESIGN.md
 * "Containment") can fill with links, FIFOs or huge files. Through
 * ffi/libc.ts, never by path twice:
 *
 * - {@link createFresh} unlinks whatever has the name and creates the file
 *   with `O_CREAT|O_EXCL|O_NOFOLLOW` (never written through a link), its mode
 *   set with `fchmod` on the open descriptor;
 * - {@link ensureFile} keeps a regular file with one link (an append-only
 *   log keeps its history) and replaces anything else the same way;
 * - {@link readBounded} and {@link readSlice} open with `O_NOFOLLOW|O_NONBLOCK`
 *   (a link fails, a FIFO never blocks), read only a regular file, and never
 *   more than their bound;
 * - {@link walkNoFollow} walks a tree from descriptors (`O_PATH|O_NOFOLLOW`
 *   relative to the parent's), so a mode it sets is the entry's own, never
 *   a link's target, whatever is swapped in during the walk.
 *
 * Every refusal is a {@link StateError} naming the file.
 *
 * @module
 */

import { AT_FDCWD, errnoName, type FileStat, type Libc, loadLibc, O, S_IF, S_IFMT } from "../../ffi/libc.ts";
import { StateError } from "../errors.ts";

const ENOENT = 2;
const EISDIR = 21;

function libc(): Libc {
  const l = loadLibc();
  if (!l) throw new StateError("safe file access needs libc through FFI (run with --allow-ffi)");
  return l;
}

function fail(path: string, what: string, errno: number): never {
  throw new StateError(`${path}: ${what} (${errnoName(errno)})`);
}

/**
 * Unlinks `path` (a link itself, never its target; a directory there is a
 * {@link StateError}); a missing one is fine.
 *
 * @example
 * ```ts
 * import { removeEntry } from "./nofollow.ts";
 * removeEntry("/nonexistent/status.json");
 * ```
 */
export function removeEntry(path: string): void {
  unlinkEntry(libc(), path);
}

function unlinkEntry(l: Libc, path: string): void {
  const rc = l.unlinkAt(AT_FDCWD, path);
  if (rc === EISDIR) throw new StateError(`${path} is a directory where krunbox keeps a file`);
  if (rc !== 0 && rc !== ENOENT) fail(path, "cannot unlink", rc);
}

/** Writes all of `data` to `fd`. */
async function writeFd(l: Libc, fd: number, path: string, data: Uint8Array): Promise<void> {
  const rc = await l.writeAll(fd, data);
  if (rc !== 0) fail(path, "write failed", rc);
}

/**
 * Creates `path` anew holding `data` with mode `mode` (0600 by default):
 * whatever had the name (a file, a link, a FIFO) is unlinked first, never
 * followed, and the file is made with `O_EXCL|O_NOFOLLOW`.
 *
 * @example
 * ```ts
 * import { createFresh } from "./nofollow.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.symlink("/etc/hostname", `${dir}/vm.json`);
 * await createFresh(`${dir}/vm.json`, "{}");
 * console.log(Deno.lstatSync(`${dir}/vm.json`).isFile); // true (the link is gone, /etc/hostname untouched)
 * ```
 */
export async function createFresh(path: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const l = libc();
  unlinkEntry(l, path);
  const fd = l.openAt(AT_FDCWD, path, O.wronly | O.creat | O.excl | O.nofollow, mode);
  if (fd < 0) fail(path, "cannot create", -fd);
  try {
    const rc = l.fchmod(fd, mode);
    if (rc !== 0) fail(path, "cannot set its mode", rc);
    await writeFd(l, fd, path, typeof data === "string" ? new TextEncoder().encode(data) : data);
  } finally {
    l.close(fd);
  }
}

/**
 * Makes sure `path` is a regular file of ours with mode `mode`, keeping its
 * content when it is one with a single link; anything else there (a link,
 * a FIFO, a hard link) is replaced by an empty file ({@link createFresh}).
 *
 * @example
 * ```ts
 * import { ensureFile } from "./nofollow.ts";
 * await ensureFile(`${await Deno.makeTempDir()}/runner.log`);
 * ```
 */
export async function ensureFile(path: string, mode = 0o600): Promise<void> {
  const l = libc();
  const fd = l.openAt(AT_FDCWD, path, O.wronly | O.creat | O.nofollow | O.nonblock, mode);
  if (fd >= 0) {
    try {
      const st = l.fstat(fd);
      if (st.errno === 0 && ((st as FileStat).mode & S_IFMT) === S_IF.reg && (st as FileStat).nlink === 1) {
        const rc = l.fchmod(fd, mode);
        if (rc !== 0) fail(path, "cannot set its mode", rc);
        return;
      }
    } finally {
      l.close(fd);
    }
  }
  await createFresh(path, new Uint8Array(), mode);
}

/** What {@link readSlice} read. */
export interface Slice {
  /** The bytes read (at most the bound). */
  readonly bytes: Uint8Array;
  /** Where they start in the file. */
  readonly offset: number;
  /** The file's size when it was read. */
  readonly size: number;
}

/**
 * Reads at most `maxBytes` of the regular file `path` from `from` (a byte
 * offset, or `"end"` for its last `maxBytes`), without following a link;
 * undefined when there is no such file. A link, a FIFO or anything not a
 * regular file is a {@link StateError}.
 *
 * @example
 * ```ts
 * import { readSlice } from "./nofollow.ts";
 * console.log(readSlice("/etc/hostname", "end", 16)?.bytes.length); // at most 16
 * ```
 */
export function readSlice(path: string, from: number | "end", maxBytes: number): Slice | undefined {
  const l = libc();
  const fd = l.openAt(AT_FDCWD, path, O.rdonly | O.nofollow | O.nonblock);
  if (fd === -ENOENT) return undefined;
  if (fd < 0) fail(path, "cannot open it without following a link", -fd);
  try {
    const st = l.fstat(fd);
    if (st.errno !== 0) fail(path, "cannot stat", st.errno);
    const { mode, size } = st as FileStat;
    if ((mode & S_IFMT) !== S_IF.reg) throw new StateError(`${path} is not a regular file`);
    const offset = from === "end" ? Math.max(0, size - maxBytes) : Math.max(0, from);
    const buf = new Uint8Array(Math.max(0, Math.min(size - offset, maxBytes)));
    let got = 0;
    while (got < buf.length) {
      const n = l.pread(fd, buf.subarray(got), offset + got);
      if (n < 0) fail(path, "read failed", -n);
      if (n === 0) break;
      got += n;
    }
    return { bytes: buf.subarray(0, got), offset, size };
  } finally {
    l.close(fd);
  }
}

/**
 * The whole regular file `path` (at most `maxBytes`: a longer one is a
 * {@link StateError}), read without following a link; undefined when there
 * is no such file.
 *
 * @example
 * ```ts
 * import { readBounded } from "./nofollow.ts";
 * console.log(readBounded("/nonexistent/vm.json", 1 << 20)); // undefined
 * ```
 */
export function readBounded(path: string, maxBytes: number): Uint8Array | undefined {
  const slice = readSlice(path, 0, maxBytes + 1);
  if (slice && slice.bytes.length > maxBytes) {
    throw new StateError(`${path} holds ${slice.size} bytes, over the ${maxBytes} allowed`);
  }
  return slice?.bytes;
}

/** An entry {@link walkNoFollow} met: a directory or a regular file (links, sockets, FIFOs, devices are skipped). */
export interface WalkEntry {
  /** Its path relative to the walk's root (`""` for the root). */
  readonly rel: string;
  /** Its `st_mode`. */
  readonly mode: number;
  readonly isDirectory: boolean;
  /** Sets its mode (through its own descriptor: never a link's target). 0 or the errno. */
  chmod(mode: number): number;
}

/**
 * Walks `root` from descriptors: every entry is opened `O_PATH|O_NOFOLLOW`
 * relative to its parent's descriptor, so a name swapped for a link during
 * the walk (a runner can write its sandbox directory) is never followed,
 * neither as the last component nor as a directory on the way. `visit`
 * says whether to go into a directory. Entries that vanish meanwhile are
 * skipped.
 *
 * @example
 * ```ts
 * import { walkNoFollow } from "./nofollow.ts";
 * const dir = await Deno.makeTempDir();
 * const seen: string[] = [];
 * walkNoFollow(dir, (e) => (seen.push(e.rel), true));
 * console.log(seen); // [ "" ]
 * ```
 */
export function walkNoFollow(root: string, visit: (entry: WalkEntry) => boolean): void {
  const l = libc();
  const fd = l.openAt(AT_FDCWD, root, O.path | O.nofollow);
  if (fd >= 0) walkFd(l, fd, "", visit);
}

function walkFd(l: Libc, fd: number, rel: string, visit: (entry: WalkEntry) => boolean): void {
  try {
    const st = l.fstat(fd);
    if (st.errno !== 0) return;
    const type = (st as FileStat).mode & S_IFMT;
    if (type !== S_IF.dir && type !== S_IF.reg) return;
    const self = `/proc/self/fd/${fd}`;
    const entry: WalkEntry = {
      rel,
      mode: (st as FileStat).mode,
      isDirectory: type === S_IF.dir,
      chmod: (mode) => {
        try {
          Deno.chmodSync(self, mode);
          return 0;
        } catch (e) {
          return e instanceof Deno.errors.NotFound ? ENOENT : 1;
        }
      },
    };
    if (!visit(entry) || type !== S_IF.dir) return;
    let names: string[];
    try {
      names = [...Deno.readDirSync(self)].map((e) => e.name);
    } catch {
      return; // unreadable or gone
    }
    for (const name of names) {
      const child = l.openAt(fd, name, O.path | O.nofollow);
      if (child >= 0) walkFd(l, child, rel ? `${rel}/${name}` : name, visit);
    }
  } finally {
    l.close(fd);
  }
}
