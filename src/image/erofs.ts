/**
 * An EROFS image writer: the read-only lower every sandbox of an image
 * shares. Uncompressed, 4 KiB blocks, extended (64-byte) inodes, inline
 * xattrs, and the on-disk format the Linux kernel has read since 5.4
 * (`Documentation/filesystems/erofs.rst`).
 *
 * Layout of the file:
 *
 * ```
 * block 0            superblock (at byte 1024)
 * blocks 1 … d-1     file data, written by {@link DataArea} while layers stream in
 * blocks d … m-1     metadata: inodes with their xattrs and inline data (small files, dirs, symlinks)
 * blocks m …         directory and small-file blocks too big to sit inline
 * ```
 *
 * Large files are written once, straight from the layer stream, to the data
 * area; {@link writeErofs} only adds the metadata once every layer is
 * applied. A file later replaced or deleted by an upper layer keeps its
 * blocks (as in the layer tarballs themselves).
 *
 * @module
 */

import { encodeName } from "./names.ts";
import type { Inode, NodeType } from "./tree.ts";

/** Block size (bytes). */
export const BLOCK_SIZE = 4096;
const BLOCK_BITS = 12;
const SUPERBLOCK_OFFSET = 1024;
const MAGIC = 0xe0f5e1e2;
const INODE_SIZE = 64; // erofs_inode_extended
const XATTR_HEADER = 12; // erofs_xattr_ibody_header
const DIRENT_SIZE = 12; // erofs_dirent
/** The most inline xattr bytes an inode can describe (i_xattr_icount is 16 bits). */
const XATTR_BODY_MAX = XATTR_HEADER + 0xfffe * 4;
/** i_format data layouts. */
const FLAT_PLAIN = 0;
const FLAT_INLINE = 2;
/** Files up to this size are held in memory and written inline after their inode. */
export const INLINE_MAX = BLOCK_SIZE - INODE_SIZE;

const FILE_TYPE: Record<NodeType, number> = { file: 1, dir: 2, char: 3, block: 4, fifo: 5, symlink: 7 };
const MODE_TYPE: Record<NodeType, number> = {
  file: 0o100000,
  dir: 0o040000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
  symlink: 0o120000,
};

/** xattr name prefixes EROFS stores as an index (the rest of the name follows). */
const XATTR_PREFIXES: readonly [string, number][] = [
  ["system.posix_acl_access", 2],
  ["system.posix_acl_default", 3],
  ["user.", 1],
  ["trusted.", 4],
  ["security.", 6],
];

const enc = new TextEncoder();
const DOT = enc.encode(".");
const DOTDOT = enc.encode("..");

/**
 * The data area of an image being built: reserves block-aligned extents in
 * the file (from block 1 on) and writes them, buffering contiguous writes.
 * One {@link DataSink} per concurrent writer, each with its own file handle.
 *
 * @example
 * ```ts
 * import { DataArea } from "./erofs.ts";
 * using area = await DataArea.create("/tmp/lower.erofs");
 * using sink = await area.sink();
 * const block = area.reserve(10_000);
 * sink.write(block * 4096, new Uint8Array(10_000));
 * sink.flush();
 * ```
 */
export class DataArea implements Disposable {
  readonly path: string;
  #next = 1;
  readonly #sinks = new Set<DataSink>();

  private constructor(path: string) {
    this.path = path;
  }

  /** Creates (truncates) the image file. */
  static async create(path: string): Promise<DataArea> {
    await Deno.writeFile(path, new Uint8Array(0));
    return new DataArea(path);
  }

  /** The first block after everything reserved so far. */
  get end(): number {
    return this.#next;
  }

  /** Reserves whole blocks for `bytes` bytes; returns the first block. */
  reserve(bytes: number): number {
    const block = this.#next;
    this.#next += Math.ceil(bytes / BLOCK_SIZE);
    return block;
  }

  /** A writer with its own file handle (close it, or dispose the area). */
  async sink(): Promise<DataSink> {
    const file = await Deno.open(this.path, { write: true });
    const sink = new DataSink(file, () => this.#sinks.delete(sink));
    this.#sinks.add(sink);
    return sink;
  }

  /** Closes every sink still open (unflushed bytes are dropped). */
  [Symbol.dispose](): void {
    for (const s of [...this.#sinks]) s[Symbol.dispose]();
  }
}

/** Small writes are gathered up to this many bytes. */
const SINK_BUFFER = 1 << 20;

/**
 * Writes to one {@link DataArea}. Writes are synchronous: each lands in
 * the page cache, and async file ops cost several times more per call
 * here. Small contiguous writes are gathered; a seek happens only when a
 * write does not continue the previous one.
 *
 * @example
 * ```ts
 * import type { DataSink } from "./erofs.ts";
 * function fill(sink: DataSink, at: number, bytes: Uint8Array) {
 *   sink.write(at, bytes);
 *   sink.flush();
 * }
 * ```
 */
export class DataSink implements Disposable {
  readonly #file: Deno.FsFile;
  readonly #onClose: () => void;
  readonly #buf = new Uint8Array(SINK_BUFFER);
  #len = 0;
  /** Image offset of the buffer's first byte. */
  #at = 0;
  /** The file handle's position. */
  #pos = 0;
  #closed = false;

  constructor(file: Deno.FsFile, onClose: () => void) {
    this.#file = file;
    this.#onClose = onClose;
  }

  /** Writes `bytes` at byte offset `at` of the image. */
  write(at: number, bytes: Uint8Array): void {
    const gap = at - (this.#at + this.#len);
    // The zero tail of the previous file's last block is gathered too: one write instead of two and a seek.
    if (this.#len > 0 && gap > 0 && gap < BLOCK_SIZE && this.#len + gap <= SINK_BUFFER) {
      this.#buf.fill(0, this.#len, this.#len + gap);
      this.#len += gap;
    }
    if (this.#len > 0 && at !== this.#at + this.#len) this.flush();
    if (this.#len === 0) this.#at = at;
    if (this.#len + bytes.length <= SINK_BUFFER) {
      this.#buf.set(bytes, this.#len);
      this.#len += bytes.length;
      return;
    }
    this.flush();
    this.#writeAt(at, bytes);
  }

  /** Writes out what is gathered. */
  flush(): void {
    if (this.#len === 0) return;
    this.#writeAt(this.#at, this.#buf.subarray(0, this.#len));
    this.#len = 0;
  }

  #writeAt(at: number, bytes: Uint8Array): void {
    if (at !== this.#pos) this.#file.seekSync(at, Deno.SeekMode.Start);
    for (let off = 0; off < bytes.length;) off += this.#file.writeSync(bytes.subarray(off));
    this.#pos = at + bytes.length;
  }

  [Symbol.dispose](): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
    this.#onClose();
  }
}

/**
 * What {@link writeErofs} wrote.
 *
 * @example
 * ```ts
 * import type { ErofsSummary } from "./erofs.ts";
 * const line = (s: ErofsSummary) => `${s.inodes} inodes in ${s.blocks * 4096} bytes`;
 * ```
 */
export interface ErofsSummary {
  inodes: number;
  blocks: number;
  /** xattrs EROFS cannot hold (an unknown name prefix), skipped. */
  skippedXattrs: string[];
}

/** A name in a directory block. */
interface DirItem {
  name: Uint8Array;
  inode: Inode;
}

/** Where one inode goes and what it carries. */
interface Slot {
  inode: Inode;
  /** Byte offset in the metadata area (a multiple of 32). */
  pos: number;
  xattrs: Uint8Array;
  layout: number;
  /** i_size. */
  size: number;
  /** Inline bytes after the inode and its xattrs. */
  inline: Uint8Array;
  /** Bytes written to whole blocks after the metadata (dir blocks, small files that do not fit inline). */
  extra?: Uint8Array;
  /** i_u: first block, or the device number. */
  iu: number;
  nlink: number;
  ino: number;
  /** Directory items, sorted. */
  items?: DirItem[];
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function xattrBody(inode: Inode, skipped: string[]): Uint8Array {
  const entries: { full: string; index: number; name: Uint8Array; value: Uint8Array }[] = [];
  for (const [name, value] of inode.xattrs) {
    const p = XATTR_PREFIXES.find(([prefix]) => name.startsWith(prefix));
    const suffix = p ? enc.encode(name.slice(p[0].length)) : undefined;
    // trusted.overlay.* would steer the guest's overlayfs: never taken from an image.
    if (!p || !suffix || suffix.length > 255 || value.length > 0xffff || name.startsWith("trusted.overlay.")) {
      if (skipped.length < 1000) skipped.push(name);
      continue;
    }
    entries.push({ full: name, index: p[1], name: suffix, value });
  }
  let size = XATTR_HEADER;
  const kept = entries.filter((e) => {
    const add = align(4 + e.name.length + e.value.length, 4);
    if (size + add > XATTR_BODY_MAX) {
      if (skipped.length < 1000) skipped.push(e.full);
      return false;
    }
    size += add;
    return true;
  });
  if (kept.length === 0) return new Uint8Array(0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let off = XATTR_HEADER;
  for (const e of kept) {
    out[off] = e.name.length;
    out[off + 1] = e.index;
    view.setUint16(off + 2, e.value.length, true);
    out.set(e.name, off + 4);
    out.set(e.value, off + 4 + e.name.length);
    off += align(4 + e.name.length + e.value.length, 4);
  }
  return out;
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** Splits sorted directory items into blocks; returns each block's items. */
function dirBlocks(items: DirItem[]): DirItem[][] {
  const blocks: DirItem[][] = [];
  let cur: DirItem[] = [];
  let used = 0;
  for (const it of items) {
    const need = DIRENT_SIZE + it.name.length;
    if (used + need > BLOCK_SIZE) {
      blocks.push(cur);
      cur = [];
      used = 0;
    }
    cur.push(it);
    used += need;
  }
  blocks.push(cur);
  return blocks;
}

function dirBlockBytes(block: DirItem[]): number {
  return block.reduce((n, it) => n + DIRENT_SIZE + it.name.length, 0);
}

/**
 * Writes the metadata and superblock of an EROFS image whose data area
 * (`area`) already holds the large files of `root`'s tree.
 *
 * @example
 * ```ts
 * import { DataArea, writeErofs } from "./erofs.ts";
 * import { LayerTree } from "./tree.ts";
 * const tree = new LayerTree();
 * using area = await DataArea.create("/tmp/empty.erofs");
 * const summary = await writeErofs(area, tree.root);
 * console.log(summary.inodes); // 1
 * ```
 */
export async function writeErofs(area: DataArea, root: Inode): Promise<ErofsSummary> {
  const skippedXattrs: string[] = [];
  // 1. Inodes in breadth-first order (root first: its nid must fit 16 bits), hard links once.
  const slots: Slot[] = [];
  const slotOf = new Map<Inode, Slot>();
  const queue: Inode[] = [root];
  const parentOf = new Map<Inode, Inode>([[root, root]]);
  const links = new Map<Inode, number>();
  for (let q = 0; q < queue.length; q++) {
    const inode = queue[q];
    const slot: Slot = {
      inode,
      pos: 0,
      xattrs: xattrBody(inode, skippedXattrs),
      layout: FLAT_PLAIN,
      size: 0,
      inline: new Uint8Array(0),
      iu: 0,
      nlink: 2,
      ino: slots.length + 1,
    };
    slots.push(slot);
    slotOf.set(inode, slot);
    if (inode.type !== "dir") continue;
    const items: DirItem[] = [
      { name: DOT, inode },
      { name: DOTDOT, inode: parentOf.get(inode)! },
    ];
    for (const [name, d] of inode.children!) {
      const child = d.inode;
      items.push({ name: encodeName(name), inode: child });
      if (child.type === "dir") {
        slot.nlink++;
        parentOf.set(child, inode);
        queue.push(child);
        continue;
      }
      const n = links.get(child) ?? 0;
      if (n === 0) queue.push(child); // a hard-linked inode is written once
      links.set(child, n + 1);
    }
    slot.items = items.sort((a, b) => compareBytes(a.name, b.name));
  }
  for (const [inode, n] of links) slotOf.get(inode)!.nlink = n;

  // 2. Data layout of each inode (sizes only: positions come next).
  let extraBlocks = 0;
  for (const s of slots) {
    const inode = s.inode;
    const room = BLOCK_SIZE - INODE_SIZE - s.xattrs.length;
    if (inode.type === "char" || inode.type === "block") {
      s.iu = ((inode.devminor & 0xfff00) << 12) | ((inode.devmajor & 0xfff) << 8) | (inode.devminor & 0xff);
      continue;
    }
    if (inode.type === "fifo") continue;
    let bytes: Uint8Array | undefined;
    if (inode.type === "symlink") bytes = encodeName(inode.target);
    else if (inode.type === "file") {
      const data = inode.data!;
      if (data.kind === "blocks") {
        s.size = data.size;
        s.iu = data.size === 0 ? 0 : data.block;
        continue;
      }
      bytes = data.bytes;
    } else {
      const blocks = dirBlocks(s.items!);
      const last = dirBlockBytes(blocks[blocks.length - 1]);
      s.size = (blocks.length - 1) * BLOCK_SIZE + last;
      if (blocks.length === 1 && last <= room) {
        s.layout = FLAT_INLINE;
        s.inline = new Uint8Array(last); // filled once nids are known
      } else {
        s.extra = new Uint8Array(blocks.length * BLOCK_SIZE);
        extraBlocks += blocks.length;
      }
      continue;
    }
    s.size = bytes.length;
    if (bytes.length === 0) continue;
    if (bytes.length <= room) {
      s.layout = FLAT_INLINE;
      s.inline = bytes;
    } else {
      s.extra = bytes;
      extraBlocks += Math.ceil(bytes.length / BLOCK_SIZE);
    }
  }

  // 3. Positions in the metadata area: 32-byte aligned, never crossing a block.
  let pos = 0;
  for (const s of slots) {
    const len = INODE_SIZE + s.xattrs.length + s.inline.length;
    pos = align(pos, 32);
    if ((pos % BLOCK_SIZE) + len > BLOCK_SIZE) pos = align(pos, BLOCK_SIZE);
    s.pos = pos;
    pos += len;
  }
  const metaBlock = area.end;
  const metaBlocks = Math.max(1, Math.ceil(pos / BLOCK_SIZE));
  let extraAt = metaBlock + metaBlocks;
  for (const s of slots) {
    if (!s.extra) continue;
    s.iu = extraAt;
    extraAt += Math.ceil(s.extra.length / BLOCK_SIZE);
  }
  const totalBlocks = extraAt;
  const nid = (inode: Inode) => slotOf.get(inode)!.pos / 32;

  // 4. Directory contents, now that every nid is known.
  for (const s of slots) {
    if (!s.items) continue;
    const out = s.extra ?? s.inline;
    const blocks = dirBlocks(s.items);
    blocks.forEach((items, b) => {
      const base = b * BLOCK_SIZE;
      const view = new DataView(out.buffer, out.byteOffset + base);
      let nameAt = items.length * DIRENT_SIZE;
      items.forEach((it, i) => {
        view.setBigUint64(i * DIRENT_SIZE, BigInt(nid(it.inode)), true);
        view.setUint16(i * DIRENT_SIZE + 8, nameAt, true);
        out[base + i * DIRENT_SIZE + 10] = FILE_TYPE[it.inode.type];
        out.set(it.name, base + nameAt);
        nameAt += it.name.length;
      });
    });
  }

  // 5. Serialize the metadata area.
  const meta = new Uint8Array(metaBlocks * BLOCK_SIZE);
  const view = new DataView(meta.buffer);
  let buildTime = 0;
  for (const s of slots) {
    const i = s.inode;
    const at = s.pos;
    const icount = s.xattrs.length ? (s.xattrs.length - XATTR_HEADER) / 4 + 1 : 0;
    view.setUint16(at, 1 | (s.layout << 1), true); // extended inode
    view.setUint16(at + 2, icount, true);
    view.setUint16(at + 4, MODE_TYPE[i.type] | (i.mode & 0o7777), true);
    view.setBigUint64(at + 8, BigInt(s.size), true);
    view.setUint32(at + 16, s.iu >>> 0, true);
    view.setUint32(at + 20, s.ino, true);
    view.setUint32(at + 24, i.uid >>> 0, true);
    view.setUint32(at + 28, i.gid >>> 0, true);
    const secs = Math.floor(Number.isFinite(i.mtime) ? i.mtime : 0);
    view.setBigInt64(at + 32, BigInt(secs), true);
    view.setUint32(at + 40, Math.min(999_999_999, Math.round((i.mtime - secs) * 1e9)) >>> 0, true);
    view.setUint32(at + 44, s.nlink, true);
    meta.set(s.xattrs, at + INODE_SIZE);
    meta.set(s.inline, at + INODE_SIZE + s.xattrs.length);
    buildTime = Math.max(buildTime, secs);
  }

  // 6. Superblock.
  const sb = new Uint8Array(128);
  const sv = new DataView(sb.buffer);
  sv.setUint32(0, MAGIC, true);
  sb[12] = BLOCK_BITS;
  sv.setUint16(14, slots[0].pos / 32, true); // root nid
  sv.setBigUint64(16, BigInt(slots.length), true);
  sv.setBigUint64(24, BigInt(buildTime), true);
  sv.setUint32(36, totalBlocks, true);
  sv.setUint32(40, metaBlock, true);
  sb.set(crypto.getRandomValues(new Uint8Array(16)), 48); // uuid

  using file = await Deno.open(area.path, { write: true });
  await writeAt(file, SUPERBLOCK_OFFSET, sb);
  await writeAt(file, metaBlock * BLOCK_SIZE, meta);
  for (const s of slots) if (s.extra) await writeAt(file, s.iu * BLOCK_SIZE, s.extra);
  await file.truncate(totalBlocks * BLOCK_SIZE);
  return { inodes: slots.length, blocks: totalBlocks, skippedXattrs };
}

async function writeAt(file: Deno.FsFile, at: number, bytes: Uint8Array): Promise<void> {
  await file.seek(at, Deno.SeekMode.Start);
  for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
}
