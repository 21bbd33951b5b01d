/**
 * The flattened root of an image as an in-memory tree: OCI layers are
 * applied to it in order (whiteouts and opaque directories included), and
 * {@link writeErofs} turns it into the image's read-only lower. Nothing is
 * unpacked onto the host, so ownership, device nodes and xattrs are kept
 * exactly as the archive says whether or not the host runs as root, and no
 * hostile entry can reach the host's file system.
 *
 * Hostile archives are still refused, so an image means the same thing here
 * as under `tar -x`: any `..` component or NUL byte in a name, a name over
 * 4096 or a component over 255 bytes, an empty or over-long symlink
 * target, a device number Linux cannot hold, a parent
 * that is a symlink or not a directory, a hard link to a missing path or to a
 * directory, a root that is not a directory. Whiteouts (`.wh.name`,
 * `.wh..wh..opq`) only remove what lower layers put there, never the
 * entries of their own layer.
 *
 * @module
 */

import { encodeName } from "./names.ts";
import { ImageError } from "../errors.ts";

/** Kinds of file the tree holds. */
export type NodeType = "file" | "dir" | "symlink" | "char" | "block" | "fifo";

/** Where a regular file's (or long symlink's) bytes are. */
export type NodeData =
  /** Held in memory (small files): written inline after the inode. */
  | { readonly kind: "memory"; readonly bytes: Uint8Array }
  /** Already written to the image's data area, from block `block` on. */
  | { readonly kind: "blocks"; readonly block: number; readonly size: number };

/**
 * One inode of the tree; hard links share it.
 *
 * @example
 * ```ts
 * import type { Inode } from "./tree.ts";
 * const describe = (n: Inode) => `${n.type} ${n.mode.toString(8)} ${n.uid}:${n.gid}`;
 * ```
 */
export interface Inode {
  type: NodeType;
  /** Permission bits (`0o7777`). */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time in seconds (fractional). */
  mtime: number;
  xattrs: ReadonlyMap<string, Uint8Array>;
  /** Device numbers of `char` and `block` nodes. */
  devmajor: number;
  devminor: number;
  /** Symlink target. */
  target: string;
  /** Content of a regular file. */
  data?: NodeData;
  /** Children of a directory, by name. */
  children?: Map<string, Dirent>;
}

/** A name in a directory: the inode, and the layer that last put it there. */
export interface Dirent {
  inode: Inode;
  layer: number;
}

/**
 * One entry of a layer, its name already normalized (see
 * {@link normalizeEntryPath}) and its content already stored.
 *
 * @example
 * ```ts
 * import type { LayerEntry } from "./tree.ts";
 * const passwd: LayerEntry = {
 *   path: "etc/passwd", name: "./etc/passwd", offset: 0, type: "file", mode: 0o644, uid: 0, gid: 0, mtime: 0,
 *   xattrs: new Map(), linkname: "", devmajor: 0, devminor: 0,
 *   data: { kind: "memory", bytes: new TextEncoder().encode("root:x:0:0::/root:/bin/sh\n") },
 * };
 * ```
 */
export interface LayerEntry {
  /** Normalized path ("" is the root). */
  readonly path: string;
  /** The name as the archive wrote it (for messages). */
  readonly name: string;
  /** Offset of the entry's header in the uncompressed layer (for messages). */
  readonly offset: number;
  readonly type: NodeType | "hardlink";
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: number;
  readonly xattrs: ReadonlyMap<string, Uint8Array>;
  readonly linkname: string;
  readonly devmajor: number;
  readonly devminor: number;
  readonly data?: NodeData;
}

/**
 * What applying the layers did.
 *
 * @example
 * ```ts
 * import type { TreeStats } from "./tree.ts";
 * const line = (s: TreeStats) => `${s.files} files, ${s.whiteouts} whiteouts, ${s.warnings.length} warnings`;
 * ```
 */
export interface TreeStats {
  /** Archive entries seen (whiteouts included). */
  entries: number;
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  /** Character and block devices. */
  devices: number;
  fifos: number;
  /** Whiteout entries applied (plain and opaque). */
  whiteouts: number;
  /** Entries skipped (aufs metadata, hard links to themselves). */
  entriesSkipped: number;
  /** Human-readable warnings, at most the first 1000. */
  warnings: string[];
}

const WHITEOUT = ".wh.";
/** Longest name of one path component (bytes), as Linux and EROFS allow. */
const NAME_MAX = 255;
/**
 * Longest entry name or link target (UTF-16 units; at least as many UTF-8
 * bytes), as `tar -x` can create.
 *
 * @example
 * ```ts
 * import { PATH_MAX } from "./tree.ts";
 * const tooLong = (linkname: string) => linkname.length > PATH_MAX;
 * ```
 */
export const PATH_MAX = 4096;
/** Longest symlink target (bytes): PATH_MAX less its NUL. */
const SYMLINK_MAX = 4095;
const OPAQUE = ".wh..wh..opq";
const MAX_WARNINGS = 1000;

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
 * import { normalizeEntryPath } from "./tree.ts";
 * console.log(normalizeEntryPath("./usr//bin/")); // "usr/bin"
 * console.log(normalizeEntryPath("/etc/passwd")); // "etc/passwd"
 * ```
 */
export function normalizeEntryPath(name: string): string {
  if (name.includes("\0")) throw invalid(`entry name ${JSON.stringify(name)} contains a NUL byte`);
  if (name.length > PATH_MAX) {
    throw invalid(`entry name ${JSON.stringify(name.slice(0, 64))}… is longer than ${PATH_MAX}`);
  }
  const parts: string[] = [];
  for (const p of name.split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") throw invalid(`entry name ${JSON.stringify(name)} has a ".." component (escapes the root)`);
    // A UTF-16 length up to 85 cannot reach 256 UTF-8 bytes: only long names are encoded.
    if (p.length > 85 && encodeName(p).length > NAME_MAX) {
      throw invalid(`entry name ${JSON.stringify(name)} has a component longer than ${NAME_MAX} bytes`);
    }
    parts.push(p);
  }
  return parts.join("/");
}

function newDir(mode: number, mtime: number): Inode {
  return {
    type: "dir",
    mode,
    uid: 0,
    gid: 0,
    mtime,
    xattrs: new Map(),
    devmajor: 0,
    devminor: 0,
    target: "",
    children: new Map(),
  };
}

/**
 * A root being assembled from layers.
 *
 * @example
 * ```ts
 * import { LayerTree } from "./tree.ts";
 * const tree = new LayerTree();
 * tree.apply(0, {
 *   path: "tmp", name: "tmp/", offset: 0, type: "dir", mode: 0o1777, uid: 0, gid: 0, mtime: 0,
 *   xattrs: new Map(), linkname: "", devmajor: 0, devminor: 0,
 * });
 * console.log(tree.root.children!.get("tmp")?.inode.mode.toString(8)); // "1777"
 * ```
 */
export class LayerTree {
  /** The root directory. */
  readonly root: Inode = newDir(0o755, 0);
  readonly stats: TreeStats = {
    entries: 0,
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    devices: 0,
    fifos: 0,
    whiteouts: 0,
    entriesSkipped: 0,
    warnings: [],
  };
  readonly #warn?: (message: string) => void;

  /** @param warn called with each warning as it happens (they are also kept in {@link stats}) */
  constructor(warn?: (message: string) => void) {
    this.#warn = warn;
  }

  #warning(message: string): void {
    if (this.stats.warnings.length < MAX_WARNINGS) this.stats.warnings.push(message);
    this.#warn?.(message);
  }

  /**
   * The directory holding `parts`' leaf. Missing parents are created (0755)
   * when `layer` is given, and every parent is marked as put there by it;
   * otherwise undefined when one is missing.
   */
  #parent(parts: readonly string[], what: string, layer?: number): Inode | undefined {
    let dir = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      const name = parts[i];
      let d = dir.children!.get(name);
      if (!d) {
        if (layer === undefined) return undefined;
        d = { inode: newDir(0o755, 0), layer };
        dir.children!.set(name, d);
      }
      if (d.inode.type !== "dir") {
        const at = parts.slice(0, i + 1).join("/");
        if (d.inode.type === "symlink") throw invalid(`${what}: parent "${at}" is a symlink; refusing to follow it`);
        throw invalid(`${what}: parent "${at}" is not a directory`);
      }
      if (layer !== undefined) d.layer = layer;
      dir = d.inode;
    }
    return dir;
  }

  /** Removes what layers below `layer` put at `name` in `dir`, sparing what `layer` itself put there. */
  #removeLower(dir: Inode, name: string, layer: number): void {
    // Iterative: a hostile layer may nest directories deeper than the call stack.
    const work: [Inode, string][] = [[dir, name]];
    for (let item = work.pop(); item; item = work.pop()) {
      const [parent, child] = item;
      const d = parent.children!.get(child);
      if (!d) continue;
      if (d.layer !== layer) {
        parent.children!.delete(child);
        continue;
      }
      if (d.inode.type === "dir") { for (const n of d.inode.children!.keys()) work.push([d.inode, n]); }
    }
  }

  #whiteout(parts: string[], layer: number, what: string): void {
    this.stats.whiteouts++;
    const base = parts[parts.length - 1];
    if (base === OPAQUE) {
      const dir = this.#parent(parts, what);
      if (!dir) return;
      for (const name of [...dir.children!.keys()]) this.#removeLower(dir, name, layer);
      return;
    }
    const name = base.slice(WHITEOUT.length);
    if (name === "" || name === "." || name === "..") throw invalid(`${what}: malformed whiteout`);
    const dir = this.#parent(parts, what);
    if (dir) this.#removeLower(dir, name, layer);
  }

  /**
   * Applies one entry of layer `layer` (layers are applied in order, from 0).
   * Throws `ImageError("IMAGE_INVALID")` on a hostile or malformed entry.
   */
  apply(layer: number, e: LayerEntry): void {
    this.stats.entries++;
    const what = `entry "${e.name}" (offset ${e.offset})`;
    const parts = e.path === "" ? [] : e.path.split("/");
    const base = parts[parts.length - 1] ?? "";
    if (base.startsWith(WHITEOUT)) {
      if (base === OPAQUE || !base.startsWith(WHITEOUT + WHITEOUT)) return this.#whiteout(parts, layer, what);
      this.stats.entriesSkipped++;
      return this.#warning(`skipped aufs metadata ${what}`);
    }
    if (e.path === "") {
      if (e.type !== "dir") throw invalid(`${what}: the root can only be a directory`);
      this.#setMeta(this.root, e);
      this.stats.dirs++;
      return;
    }
    if (e.type === "hardlink") return this.#hardlink(layer, e, parts, what);
    if ((e.type === "char" || e.type === "block") && (e.devmajor > 0xfff || e.devminor > 0xfffff)) {
      throw invalid(`${what}: device ${e.devmajor}:${e.devminor} is out of range (major < 4096, minor < 1048576)`);
    }
    if (e.type === "symlink" && (e.linkname === "" || encodeName(e.linkname).length > SYMLINK_MAX)) {
      throw invalid(`${what}: symlink target is empty or longer than ${SYMLINK_MAX} bytes`);
    }
    const dir = this.#parent(parts, what, layer)!;
    const existing = dir.children!.get(base);
    if (e.type === "dir") {
      this.stats.dirs++;
      if (existing?.inode.type === "dir") {
        existing.layer = layer;
        return this.#setMeta(existing.inode, e);
      }
      const inode = newDir(e.mode, e.mtime);
      this.#setMeta(inode, e);
      dir.children!.set(base, { inode, layer });
      return;
    }
    const inode: Inode = {
      type: e.type,
      mode: 0,
      uid: 0,
      gid: 0,
      mtime: 0,
      xattrs: new Map(),
      devmajor: e.devmajor,
      devminor: e.devminor,
      target: e.type === "symlink" ? e.linkname : "",
      data: e.type === "file" ? e.data ?? { kind: "memory", bytes: new Uint8Array(0) } : undefined,
    };
    this.#setMeta(inode, e);
    dir.children!.set(base, { inode, layer });
    if (e.type === "file") this.stats.files++;
    else if (e.type === "symlink") this.stats.symlinks++;
    else if (e.type === "fifo") this.stats.fifos++;
    else this.stats.devices++;
  }

  #setMeta(inode: Inode, e: LayerEntry): void {
    inode.mode = e.mode & 0o7777;
    inode.uid = e.uid;
    inode.gid = e.gid;
    inode.mtime = e.mtime;
    inode.xattrs = e.xattrs;
  }

  #hardlink(layer: number, e: LayerEntry, parts: string[], what: string): void {
    let target: string;
    try {
      target = normalizeEntryPath(e.linkname);
    } catch (x) {
      throw invalid(`${what}: hard link target: ${(x as Error).message.replace(/^invalid layer: /, "")}`);
    }
    if (target === "") throw invalid(`${what}: hard link to the root`);
    if (target === e.path) {
      this.stats.entriesSkipped++;
      return this.#warning(`skipped ${what}: hard link to itself`);
    }
    const tparts = target.split("/");
    const tdir = this.#parent(tparts, `${what} link target`);
    const t = tdir ? tdir.children!.get(tparts[tparts.length - 1]) : undefined;
    if (!t) throw invalid(`${what}: hard link target "${e.linkname}" does not exist`);
    if (t.inode.type === "dir") throw invalid(`${what}: hard link target "${e.linkname}" is a directory`);
    const dir = this.#parent(parts, what, layer)!;
    dir.children!.set(parts[parts.length - 1], { inode: t.inode, layer });
    this.stats.hardlinks++;
  }
}
