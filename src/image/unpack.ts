/**
 * Applies OCI image layers, in order, onto one flattened root directory.
 *
 * Hostile archives are expected. Entry names are normalized (leading `/`
 * and `./` stripped) and any `..` component is refused; no symlink is ever
 * followed: every existing parent of an entry (and of a hard link's target)
 * must be a real directory (`lstat`), anything at the leaf is removed before
 * the new node is created with `O_CREAT|O_EXCL`, so a planted symlink is
 * replaced, never written through. Whiteouts (`.wh.name`, `.wh..wh..opq`)
 * only remove what lower layers put there, never this layer's own entries.
 *
 * Without root, ownership and device nodes are skipped and counted, and
 * directories are kept owner-writable while the layer is applied (their
 * recorded mode is restored at the end). Without `--allow-ffi`, extended
 * attributes, device nodes and fifos are skipped with a warning.
 *
 * @module
 */

import { ImageError, KrunboxError } from "../errors.ts";
import { errnoName, type Libc, loadLibc } from "../../ffi/libc.ts";
import type { TarEntry } from "./tar.ts";

/**
 * Options of {@link unpackLayer}.
 *
 * @example
 * ```ts
 * import type { UnpackOptions } from "./unpack.ts";
 * const options: UnpackOptions = {
 *   onEntry: (entry, path) => console.log(entry.type, path),
 *   warn: (message) => console.warn(message),
 * };
 * ```
 */
export interface UnpackOptions {
  /** Called before each entry is applied with its normalized path; must not read the body. */
  onEntry?: (entry: TarEntry, path: string) => void | Promise<void>;
  /** Called with each warning as it happens (they are also collected in the stats). */
  warn?: (message: string) => void;
}

/**
 * What {@link unpackLayer} did.
 *
 * @example
 * ```ts
 * import type { UnpackStats } from "./unpack.ts";
 * function report(s: UnpackStats): string {
 *   return `${s.files} files, ${s.bytes} bytes, ${s.whiteouts} whiteouts, ${s.warnings.length} warnings`;
 * }
 * ```
 */
export interface UnpackStats {
  /** Archive entries seen (whiteouts included). */
  entries: number;
  /** Regular files written. */
  files: number;
  /** Directories created or updated. */
  dirs: number;
  /** Symlinks created. */
  symlinks: number;
  /** Hard links created. */
  hardlinks: number;
  /** Character and block devices created. */
  devices: number;
  /** Fifos created. */
  fifos: number;
  /** Whiteout entries applied (plain and opaque). */
  whiteouts: number;
  /** Bytes of file content written. */
  bytes: number;
  /** Extended attributes set. */
  xattrs: number;
  /** Entries whose owner could not be applied (not root, or `chown` refused). */
  ownershipSkipped: number;
  /** Device nodes and fifos not created (not root, no FFI, or `mknod` refused). */
  devicesSkipped: number;
  /** Extended attributes not set (unsupported by the filesystem, refused, or no FFI). */
  xattrsSkipped: number;
  /** Other entries skipped (aufs metadata, hard links to themselves). */
  entriesSkipped: number;
  /** Human-readable warnings, at most the first 1000. */
  warnings: string[];
}

const WHITEOUT = ".wh.";
const OPAQUE = ".wh..wh..opq";
const MAX_WARNINGS = 1000;
/** errno codes that, while applying an entry, mean the archive asks for something impossible. */
const IMAGE_FAULTS = new Set([
  "ENOENT",
  "EEXIST",
  "ENOTDIR",
  "EISDIR",
  "ENAMETOOLONG",
  "EINVAL",
  "ELOOP",
  "EMLINK",
  "EPERM",
  "ENOTEMPTY",
]);

function invalid(message: string): ImageError {
  return new ImageError("IMAGE_INVALID", `invalid layer: ${message}`);
}

/**
 * Normalizes a tar member name to a path relative to the root: leading `/`
 * and `./`, empty and `.` components dropped; `""` is the root itself. Any
 * `..` component (or a NUL byte) is refused with `IMAGE_INVALID`.
 *
 * @example
 * ```ts
 * import { normalizeEntryPath } from "./unpack.ts";
 * console.log(normalizeEntryPath("./usr//bin/")); // "usr/bin"
 * console.log(normalizeEntryPath("/etc/passwd")); // "etc/passwd"
 * ```
 */
export function normalizeEntryPath(name: string): string {
  if (name.includes("\0")) throw invalid(`entry name ${JSON.stringify(name)} contains a NUL byte`);
  const parts: string[] = [];
  for (const p of name.split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") throw invalid(`entry name ${JSON.stringify(name)} has a ".." component (escapes the root)`);
    parts.push(p);
  }
  return parts.join("/");
}

/**
 * File-system calls here are the synchronous ones: each is short, the event
 * loop still runs between entries (the tar stream is read asynchronously),
 * and an image has tens of thousands of entries, where async ops cost about
 * five times as much (measured: 9.9 s → see bench/pull_vs_msb.ts).
 */
function lstatOrNull(path: string): Deno.FileInfo | null {
  try {
    return Deno.lstatSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

function writeAll(f: Deno.FsFile, data: Uint8Array): void {
  for (let off = 0; off < data.length;) off += f.writeSync(data.subarray(off));
}

/** The process uid/gid, or -1 where unknown (no `--allow-sys`): then treated as not root. */
function currentId(get: () => number | null): number {
  try {
    return get() ?? -1;
  } catch {
    return -1;
  }
}

/** The process umask (what `open` takes off a create mode); all bits when unknown. */
function processUmask(): number {
  try {
    return Deno.umask();
  } catch {
    return 0o777;
  }
}

const depth = (rel: string) => (rel === "" ? 0 : rel.split("/").length);
const parentOf = (rel: string) => rel.slice(0, Math.max(0, rel.lastIndexOf("/")));

interface DirMeta {
  mode: number;
  mtime?: number;
}

class Unpacker {
  readonly stats: UnpackStats = {
    entries: 0,
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    devices: 0,
    fifos: 0,
    whiteouts: 0,
    bytes: 0,
    xattrs: 0,
    ownershipSkipped: 0,
    devicesSkipped: 0,
    xattrsSkipped: 0,
    entriesSkipped: 0,
    warnings: [],
  };
  readonly #root: string;
  readonly #warn?: (message: string) => void;
  readonly #uid = currentId(() => Deno.uid());
  readonly #gid = currentId(() => Deno.gid());
  readonly #isRoot = this.#uid === 0;
  readonly #umask = processUmask();
  #libc: Libc | null | undefined;
  /** Relative paths verified to be real directories (invalidated on removal). */
  readonly #dirs = new Set<string>();
  /** Paths this layer created or updated, with their ancestors: whiteouts spare them. */
  readonly #touched = new Set<string>();
  /** Directory mode and mtime, applied deepest first once the layer is done. */
  readonly #deferred = new Map<string, DirMeta>();
  /**
   * Directories this unpacker created (empty then) and the leaves it made in
   * them: a new leaf in a fresh directory needs no lstat (most entries of a
   * first layer), which saves a syscall and a thrown NotFound per entry.
   */
  readonly #fresh = new Set<string>();
  readonly #made = new Set<string>();

  constructor(root: string, warn?: (message: string) => void) {
    this.#root = root;
    this.#warn = warn;
  }

  #abs(rel: string): string {
    return rel === "" ? this.#root : `${this.#root}/${rel}`;
  }

  warn(message: string): void {
    if (this.stats.warnings.length < MAX_WARNINGS) this.stats.warnings.push(message);
    this.#warn?.(message);
  }

  #lib(): Libc | undefined {
    if (this.#libc === undefined) {
      this.#libc = loadLibc() ?? null;
      if (!this.#libc) this.warn("libc FFI unavailable (needs --allow-ffi): xattrs, devices and fifos are skipped");
    }
    return this.#libc ?? undefined;
  }

  #touch(rel: string): void {
    for (let r = rel; r !== "" && !this.#touched.has(r); r = parentOf(r)) this.#touched.add(r);
  }

  /** Drops every cached fact about `rel` and, for a directory, what was below it. */
  #forget(rel: string, dir: boolean): void {
    this.#dirs.delete(rel);
    this.#deferred.delete(rel);
    this.#made.delete(rel);
    if (!dir) return;
    const prefix = rel + "/";
    for (const d of this.#fresh) if (d === rel || d.startsWith(prefix)) this.#fresh.delete(d);
    for (const d of this.#made) if (d.startsWith(prefix)) this.#made.delete(d);
    for (const d of this.#dirs) if (d === rel || d.startsWith(prefix)) this.#dirs.delete(d);
    for (const d of this.#deferred.keys()) if (d === rel || d.startsWith(prefix)) this.#deferred.delete(d);
  }

  /** Without root, keeps a directory owner-writable until the end of the layer. */
  #writable(rel: string, abs: string, st: Deno.FileInfo): void {
    const mode = (st.mode ?? 0o755) & 0o7777;
    if (this.#isRoot || (mode & 0o700) === 0o700) return;
    if (!this.#deferred.has(rel)) {
      this.#deferred.set(rel, { mode, mtime: st.mtime ? st.mtime.getTime() / 1000 : undefined });
    }
    Deno.chmodSync(abs, mode | 0o700);
  }

  /**
   * Checks that every parent of `parts` is a real directory, creating missing
   * ones (0755) when `create`. False when one is missing and not created.
   */
  #parents(parts: string[], create: boolean, what: string): boolean {
    let rel = "";
    for (let i = 0; i < parts.length - 1; i++) {
      rel = rel === "" ? parts[i] : `${rel}/${parts[i]}`;
      if (this.#dirs.has(rel)) continue;
      const abs = this.#abs(rel);
      const st = lstatOrNull(abs);
      if (st === null) {
        if (!create) return false;
        Deno.mkdirSync(abs, { mode: 0o755 });
        Deno.chmodSync(abs, 0o755);
        this.#touch(rel);
        this.#fresh.add(rel);
      } else if (st.isSymlink) {
        throw invalid(`${what}: parent "${rel}" is a symlink; refusing to follow it`);
      } else if (!st.isDirectory) {
        throw invalid(`${what}: parent "${rel}" is not a directory`);
      } else {
        this.#writable(rel, abs, st);
      }
      this.#dirs.add(rel);
    }
    return true;
  }

  async #removeTree(rel: string, abs: string, st: Deno.FileInfo): Promise<void> {
    this.#forget(rel, st.isDirectory);
    if (!st.isDirectory) return Deno.removeSync(abs);
    try {
      Deno.removeSync(abs, { recursive: true });
    } catch (e) {
      if (this.#isRoot || !(e instanceof Deno.errors.PermissionDenied)) throw e;
      await makeTreeWritable(abs);
      Deno.removeSync(abs, { recursive: true });
    }
  }

  /** Clears the leaf for a new node; true when an existing directory is kept (merge). */
  async #clearLeaf(rel: string, abs: string, keepDir: boolean): Promise<boolean> {
    const fresh = this.#fresh.has(parentOf(rel)) && !this.#made.has(rel);
    this.#made.add(rel);
    if (fresh) return false;
    const st = lstatOrNull(abs);
    if (st === null) return false;
    if (keepDir && st.isDirectory) {
      this.#writable(rel, abs, st);
      return true;
    }
    await this.#removeTree(rel, abs, st);
    return false;
  }

  /** Removes what lower layers put at `rel`, sparing paths this layer touched. */
  async #removeLower(rel: string): Promise<void> {
    const abs = this.#abs(rel);
    const st = lstatOrNull(abs);
    if (st === null) return;
    if (!this.#touched.has(rel)) return await this.#removeTree(rel, abs, st);
    if (!st.isDirectory) return;
    this.#writable(rel, abs, st);
    const names: string[] = [];
    for await (const e of Deno.readDir(abs)) names.push(e.name);
    for (const name of names) await this.#removeLower(rel === "" ? name : `${rel}/${name}`);
  }

  async #whiteout(parts: string[], what: string): Promise<void> {
    this.stats.whiteouts++;
    const base = parts[parts.length - 1];
    const dir = parts.slice(0, -1);
    if (base === OPAQUE) {
      if (!(this.#parents(dir, false, what))) return;
      const drel = dir.join("/");
      const st = lstatOrNull(this.#abs(drel));
      if (st === null || !st.isDirectory) return; // nothing below a non-directory to hide
      this.#dirs.add(drel);
      const names: string[] = [];
      for await (const e of Deno.readDir(this.#abs(drel))) names.push(e.name);
      for (const name of names) await this.#removeLower(drel === "" ? name : `${drel}/${name}`);
      return;
    }
    const name = base.slice(WHITEOUT.length);
    if (name === "" || name === "." || name === "..") throw invalid(`${what}: malformed whiteout`);
    const target = [...dir, name];
    if (this.#parents(target, false, what)) await this.#removeLower(target.join("/"));
  }

  #owner(abs: string, e: TarEntry, symlink: boolean): void {
    if (!this.#isRoot) {
      if (e.uid !== this.#uid || e.gid !== this.#gid) this.stats.ownershipSkipped++;
      return;
    }
    if (e.uid === this.#uid && e.gid === this.#gid) return; // created as ours already
    let err = "";
    if (symlink) {
      const libc = this.#lib();
      const rc = libc ? libc.lchown(abs, e.uid, e.gid) : -1;
      if (rc !== 0) err = rc < 0 ? "no FFI" : errnoName(rc);
    } else {
      try {
        Deno.chownSync(abs, e.uid, e.gid);
      } catch (x) {
        err = (x as Error).message;
      }
    }
    if (err) {
      this.stats.ownershipSkipped++;
      this.warn(`cannot chown "${e.name}" to ${e.uid}:${e.gid}: ${err}`);
    }
  }

  #xattrs(abs: string, e: TarEntry): void {
    if (e.xattrs.size === 0) return;
    const libc = this.#lib();
    for (const [name, value] of e.xattrs) {
      const rc = libc ? libc.setXattr(abs, name, value) : -1;
      if (rc === 0) {
        this.stats.xattrs++;
        continue;
      }
      this.stats.xattrsSkipped++;
      if (rc > 0) this.warn(`cannot set xattr ${name} on "${e.name}": ${errnoName(rc)}`);
    }
  }

  #utime(abs: string, e: TarEntry): void {
    try {
      Deno.utimeSync(abs, e.mtime, e.mtime);
    } catch (x) {
      this.warn(`cannot set mtime of "${e.name}": ${(x as Error).message}`);
    }
  }

  /** Owner, then mode (chown clears setuid), then xattrs (chown clears capabilities), then mtime. */
  #meta(abs: string, e: TarEntry, createdWith: number): void {
    this.#owner(abs, e, false);
    // chown clears setuid/setgid, so special bits always get their chmod.
    if (createdWith !== e.mode || (e.mode & 0o7000) !== 0) Deno.chmodSync(abs, e.mode);
    this.#xattrs(abs, e);
    this.#utime(abs, e);
  }

  async apply(e: TarEntry, options: UnpackOptions): Promise<void> {
    this.stats.entries++;
    const what = `entry "${e.name}" (offset ${e.offset})`;
    let rel: string;
    try {
      rel = normalizeEntryPath(e.name);
    } catch (x) {
      throw invalid(`${(x as Error).message.replace(/^invalid layer: /, "")} at offset ${e.offset}`);
    }
    await options.onEntry?.(e, rel);
    try {
      await this.#apply(e, rel, what);
    } catch (x) {
      if (x instanceof KrunboxError) throw x;
      const code = (x as { code?: unknown }).code;
      if (typeof code === "string" && IMAGE_FAULTS.has(code)) {
        throw new ImageError("IMAGE_INVALID", `invalid layer: cannot apply ${what}: ${(x as Error).message}`, {
          cause: x,
        });
      }
      throw x;
    }
  }

  async #apply(e: TarEntry, rel: string, what: string): Promise<void> {
    const parts = rel === "" ? [] : rel.split("/");
    const base = parts[parts.length - 1] ?? "";
    if (base.startsWith(WHITEOUT)) {
      if (base === OPAQUE || !base.startsWith(WHITEOUT + WHITEOUT)) return await this.#whiteout(parts, what);
      this.stats.entriesSkipped++;
      return this.warn(`skipped aufs metadata ${what}`);
    }
    const abs = this.#abs(rel);
    if (rel === "") {
      if (e.type !== "dir") throw invalid(`${what}: the root can only be a directory`);
      return await this.#dir("", abs, e);
    }
    if (e.type === "hardlink") return await this.#hardlink(e, rel, parts, abs, what);
    this.#parents(parts, true, what);
    this.#touch(rel);
    if (e.type === "dir") return await this.#dir(rel, abs, e);
    await this.#clearLeaf(rel, abs, false);
    switch (e.type) {
      case "file": {
        // Created with its final permission bits where the umask keeps them.
        const createMode = e.mode & 0o777 & ~this.#umask;
        const f = Deno.openSync(abs, { write: true, createNew: true, mode: createMode });
        try {
          for (let c = await e.read(); c !== null; c = await e.read()) {
            writeAll(f, c);
            this.stats.bytes += c.length;
          }
        } finally {
          f.close();
        }
        this.#meta(abs, e, createMode);
        this.stats.files++;
        return;
      }
      case "symlink":
        Deno.symlinkSync(e.linkname, abs);
        this.#owner(abs, e, true);
        this.#xattrs(abs, e);
        this.stats.symlinks++;
        return;
      case "char":
      case "block":
      case "fifo":
        return this.#special(e, abs, what);
    }
  }

  async #dir(rel: string, abs: string, e: TarEntry): Promise<void> {
    if (!(await this.#clearLeaf(rel, abs, true))) {
      Deno.mkdirSync(abs, { mode: 0o700 });
      this.#fresh.add(rel);
    }
    this.#dirs.add(rel);
    this.#owner(abs, e, false);
    this.#xattrs(abs, e);
    this.#deferred.set(rel, { mode: e.mode, mtime: e.mtime });
    this.stats.dirs++;
  }

  async #hardlink(e: TarEntry, rel: string, parts: string[], abs: string, what: string): Promise<void> {
    let target: string;
    try {
      target = normalizeEntryPath(e.linkname);
    } catch (x) {
      throw invalid(`${what}: hard link target: ${(x as Error).message.replace(/^invalid layer: /, "")}`);
    }
    if (target === "") throw invalid(`${what}: hard link to the root`);
    if (target === rel) {
      this.stats.entriesSkipped++;
      return this.warn(`skipped ${what}: hard link to itself`);
    }
    const tparts = target.split("/");
    const tabs = this.#abs(target);
    const tst = (this.#parents(tparts, false, `${what} link target`)) ? lstatOrNull(tabs) : null;
    if (tst === null) throw invalid(`${what}: hard link target "${e.linkname}" does not exist`);
    if (tst.isDirectory) throw invalid(`${what}: hard link target "${e.linkname}" is a directory`);
    this.#parents(parts, true, what);
    this.#touch(rel);
    await this.#clearLeaf(rel, abs, false);
    Deno.linkSync(tabs, abs);
    this.stats.hardlinks++;
  }

  #special(e: TarEntry, abs: string, what: string): void {
    const fifo = e.type === "fifo";
    if (!fifo && !this.#isRoot) {
      this.stats.devicesSkipped++;
      return this.warn(`skipped ${e.type} device ${what}: not running as root`);
    }
    const libc = this.#lib();
    if (!libc) {
      this.stats.devicesSkipped++;
      return;
    }
    const rc = fifo
      ? libc.mkfifo(abs, e.mode)
      : libc.mknod(abs, e.type as "char" | "block", e.mode, e.devmajor, e.devminor);
    if (rc !== 0) {
      this.stats.devicesSkipped++;
      return this.warn(`cannot create ${e.type} ${what}: ${errnoName(rc)}`);
    }
    this.#meta(abs, e, -1);
    if (fifo) this.stats.fifos++;
    else this.stats.devices++;
  }

  /** Makes the root itself writable for the layer (without root privileges). */
  start(st: Deno.FileInfo): void {
    this.#writable("", this.#root, st);
  }

  /** Applies directory modes and mtimes, deepest first, after their contents. */
  finish(): void {
    const dirs = [...this.#deferred].sort((a, b) => depth(b[0]) - depth(a[0]));
    for (const [rel, m] of dirs) {
      const abs = this.#abs(rel);
      const st = lstatOrNull(abs);
      if (st === null || !st.isDirectory) continue;
      try {
        Deno.chmodSync(abs, m.mode);
        if (m.mtime !== undefined) Deno.utimeSync(abs, m.mtime, m.mtime);
      } catch (x) {
        this.warn(`cannot set mode/mtime of directory "${rel || "/"}": ${(x as Error).message}`);
      }
    }
    if (this.stats.ownershipSkipped > 0 && !this.#isRoot) {
      this.warn(`ownership of ${this.stats.ownershipSkipped} entries not applied: not running as root`);
    }
  }
}

/** Makes every directory under `abs` owner-writable (never following symlinks), so it can be removed. */
async function makeTreeWritable(abs: string): Promise<void> {
  const st = lstatOrNull(abs);
  if (st === null || !st.isDirectory) return;
  Deno.chmodSync(abs, ((st.mode ?? 0) & 0o7777) | 0o700);
  for await (const e of Deno.readDir(abs)) if (e.isDirectory) await makeTreeWritable(`${abs}/${e.name}`);
}

/**
 * Applies one layer's entries onto `rootDir`, which may already hold the
 * lower layers. Fails with `ImageError("IMAGE_INVALID")` on a hostile or
 * malformed entry (path escapes, symlinked parents, bad hard links, broken
 * tar); the root is then partially applied and should be discarded. Needs
 * read/write permission on `rootDir`, and `--allow-ffi` for xattrs, device
 * nodes and fifos.
 *
 * @example
 * ```ts
 * import { readTar } from "./tar.ts";
 * import { unpackLayer } from "./unpack.ts";
 * const rootfs = await Deno.makeTempDir();
 * for (const layer of ["base.tar.gz", "app.tar.gz"]) {
 *   const file = Deno.openSync(layer);
 *   const stream = file.readable.pipeThrough(new DecompressionStream("gzip"));
 *   const stats = await unpackLayer(readTar(stream), rootfs, { warn: console.warn });
 *   console.log(layer, stats.files, "files,", stats.whiteouts, "whiteouts");
 * }
 * ```
 */
export async function unpackLayer(
  entries: AsyncIterable<TarEntry>,
  rootDir: string,
  options: UnpackOptions = {},
): Promise<UnpackStats> {
  const root = await Deno.realPath(rootDir);
  const st = Deno.lstatSync(root);
  if (!st.isDirectory) throw new Deno.errors.NotADirectory(`unpack root ${rootDir} is not a directory`);
  const u = new Unpacker(root, options.warn);
  u.start(st);
  for await (const e of entries) await u.apply(e, options);
  u.finish();
  return u.stats;
}
