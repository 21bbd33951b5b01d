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
 * {@link writeErofs} runs in phases, each a function below: number the
 * inodes, lay out each one's data, place them in the metadata area, fill
 * the directories, encode the inodes, then the superblock. The structs'
 * byte layouts are in `erofs_format.ts`.
 *
 * @module
 */

import { encodeName } from "./names.ts";
import type { Inode } from "./tree.ts";
import {
  BLOCK_SIZE,
  DataLayout,
  direntBytes,
  encodeDevice,
  encodeDirBlock,
  encodeInode,
  encodeSuperBlock,
  encodeXattrBody,
  FILE_TYPE,
  INODE_EXTENDED,
  INODE_SLOT,
  MODE_TYPE,
  SUPERBLOCK_OFFSET,
  XATTR_BODY_MAX,
  XATTR_IBODY_HEADER,
  XATTR_PREFIXES,
  xattrEntrySize,
  type XattrRecord,
} from "./erofs_format.ts";
import { writeAll } from "../util/bytes.ts";

export { BLOCK_SIZE } from "./erofs_format.ts";

/** Files up to this size are held in memory and written inline after their inode. */
export const INLINE_MAX: number = BLOCK_SIZE - INODE_EXTENDED.size;
/** Inodes are placed at multiples of this (a nid counts 32-byte slots). */
const INODE_ALIGN = INODE_SLOT;
/** Names of skipped xattrs kept for the summary. */
const MAX_SKIPPED_REPORTED = 1000;

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

/** Where the metadata went: its first block and size, and the image's end. */
interface Placement {
  metaBlock: number;
  metaBlocks: number;
  totalBlocks: number;
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
  const slots = collectInodes(root, skippedXattrs);
  for (const s of slots) layoutData(s);
  const placement = placeInodes(slots, area.end);
  const slotOf = new Map(slots.map((s) => [s.inode, s]));
  const nid = (inode: Inode) => slotOf.get(inode)!.pos / INODE_SLOT;
  for (const s of slots) fillDirectory(s, nid);
  const { meta, buildTime } = encodeMetadata(slots, placement.metaBlocks);
  const superBlock = encodeSuperBlock({
    rootNid: nid(root),
    inos: slots.length,
    buildTime,
    blocks: placement.totalBlocks,
    metaBlkaddr: placement.metaBlock,
    uuid: crypto.getRandomValues(new Uint8Array(16)),
  });

  using file = await Deno.open(area.path, { write: true });
  await writeAt(file, SUPERBLOCK_OFFSET, superBlock);
  await writeAt(file, placement.metaBlock * BLOCK_SIZE, meta);
  for (const s of slots) if (s.extra) await writeAt(file, s.iu * BLOCK_SIZE, s.extra);
  await file.truncate(placement.totalBlocks * BLOCK_SIZE);
  return { inodes: slots.length, blocks: placement.totalBlocks, skippedXattrs };
}

/**
 * Phase 1: one slot per inode in breadth-first order (the root first: its
 * nid must fit the superblock's 16 bits), a hard-linked inode once, with
 * its xattr body, inode number, link count and sorted directory items.
 */
function collectInodes(root: Inode, skippedXattrs: string[]): Slot[] {
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
      layout: DataLayout.FLAT_PLAIN,
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
  return slots;
}

/**
 * Phase 2: how a slot's data is stored (sizes only; positions come next):
 * a device number in `i_u`; a file already in the data area by its block;
 * anything else inline after the inode when it fits the rest of the
 * inode's block, else in whole blocks after the metadata.
 */
function layoutData(s: Slot): void {
  const inode = s.inode;
  const room = BLOCK_SIZE - INODE_EXTENDED.size - s.xattrs.length;
  if (inode.type === "char" || inode.type === "block") {
    s.iu = encodeDevice(inode.devmajor, inode.devminor);
    return;
  }
  if (inode.type === "fifo") return;
  let bytes: Uint8Array;
  if (inode.type === "symlink") bytes = encodeName(inode.target);
  else if (inode.type === "file") {
    const data = inode.data!;
    if (data.kind === "blocks") {
      s.size = data.size;
      s.iu = data.size === 0 ? 0 : data.block;
      return;
    }
    bytes = data.bytes;
  } else {
    const blocks = dirBlocks(s.items!);
    const last = direntBytes(blocks[blocks.length - 1]);
    s.size = (blocks.length - 1) * BLOCK_SIZE + last;
    if (blocks.length === 1 && last <= room) {
      s.layout = DataLayout.FLAT_INLINE;
      s.inline = new Uint8Array(last); // filled once nids are known
    } else {
      s.extra = new Uint8Array(blocks.length * BLOCK_SIZE);
    }
    return;
  }
  s.size = bytes.length;
  if (bytes.length === 0) return;
  if (bytes.length <= room) {
    s.layout = DataLayout.FLAT_INLINE;
    s.inline = bytes;
  } else {
    s.extra = bytes;
  }
}

/**
 * Phase 3: each inode's position in the metadata area (32-byte aligned,
 * never crossing a block, so inline data never does either), the metadata
 * area from `metaBlock` on, then the blocks of `extra` data after it.
 */
function placeInodes(slots: Slot[], metaBlock: number): Placement {
  let pos = 0;
  for (const s of slots) {
    const len = INODE_EXTENDED.size + s.xattrs.length + s.inline.length;
    pos = align(pos, INODE_ALIGN);
    if ((pos % BLOCK_SIZE) + len > BLOCK_SIZE) pos = align(pos, BLOCK_SIZE);
    s.pos = pos;
    pos += len;
  }
  const metaBlocks = Math.max(1, Math.ceil(pos / BLOCK_SIZE));
  let extraAt = metaBlock + metaBlocks;
  for (const s of slots) {
    if (!s.extra) continue;
    s.iu = extraAt;
    extraAt += Math.ceil(s.extra.length / BLOCK_SIZE);
  }
  return { metaBlock, metaBlocks, totalBlocks: extraAt };
}

/** Phase 4: a directory's blocks (inline or extra), now that every nid is known. */
function fillDirectory(s: Slot, nid: (inode: Inode) => number): void {
  if (!s.items) return;
  const out = s.extra ?? s.inline;
  dirBlocks(s.items).forEach((items, b) => {
    encodeDirBlock(
      out,
      b * BLOCK_SIZE,
      items.map((it) => ({ nid: nid(it.inode), name: it.name, fileType: FILE_TYPE[it.inode.type] })),
    );
  });
}

/** Phase 5: the metadata area: every inode, its xattrs and its inline data; and the newest mtime. */
function encodeMetadata(slots: readonly Slot[], metaBlocks: number): { meta: Uint8Array; buildTime: number } {
  const meta = new Uint8Array(metaBlocks * BLOCK_SIZE);
  const view = new DataView(meta.buffer);
  let buildTime = 0;
  for (const s of slots) {
    const i = s.inode;
    const secs = encodeInode(view, s.pos, {
      layout: s.layout,
      xattrBytes: s.xattrs.length,
      mode: MODE_TYPE[i.type] | (i.mode & 0o7777),
      size: s.size,
      u: s.iu,
      ino: s.ino,
      uid: i.uid,
      gid: i.gid,
      mtime: i.mtime,
      nlink: s.nlink,
    });
    meta.set(s.xattrs, s.pos + INODE_EXTENDED.size);
    meta.set(s.inline, s.pos + INODE_EXTENDED.size + s.xattrs.length);
    buildTime = Math.max(buildTime, secs);
  }
  return { meta, buildTime };
}

/**
 * An inode's inline xattrs. Names without an EROFS prefix index, over 255
 * bytes after the prefix, values over 65535 bytes, `trusted.overlay.*`, and
 * whatever would take the body past what `i_xattr_icount` can describe are
 * skipped and named in `skipped`.
 */
function xattrBody(inode: Inode, skipped: string[]): Uint8Array {
  const skip = (name: string) => {
    if (skipped.length < MAX_SKIPPED_REPORTED) skipped.push(name);
  };
  const candidates: (XattrRecord & { full: string })[] = [];
  for (const [name, value] of inode.xattrs) {
    const p = XATTR_PREFIXES.find(([prefix]) => name.startsWith(prefix));
    const suffix = p ? enc.encode(name.slice(p[0].length)) : undefined;
    // trusted.overlay.* would steer the guest's overlayfs: never taken from an image.
    if (!p || !suffix || suffix.length > 255 || value.length > 0xffff || name.startsWith("trusted.overlay.")) {
      skip(name);
      continue;
    }
    candidates.push({ full: name, index: p[1], name: suffix, value });
  }
  let size = XATTR_IBODY_HEADER.size;
  const kept = candidates.filter((c) => {
    const add = xattrEntrySize(c.name.length, c.value.length);
    if (size + add > XATTR_BODY_MAX) {
      skip(c.full);
      return false;
    }
    size += add;
    return true;
  });
  return encodeXattrBody(kept);
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
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
    const need = direntBytes([it]);
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

async function writeAt(file: Deno.FsFile, at: number, bytes: Uint8Array): Promise<void> {
  await file.seek(at, Deno.SeekMode.Start);
  await writeAll(file, bytes);
}
