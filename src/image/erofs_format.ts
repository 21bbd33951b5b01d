/**
 * The EROFS on-disk format krunbox writes, as named offset tables of the
 * structs in the Linux kernel's `fs/erofs/erofs_fs.h` (each offset is the
 * `offsetof` of the C field named beside it; all integers little-endian),
 * and encoders that fill one record each. Only what an uncompressed image
 * with extended inodes and inline xattrs needs: no compression, chunks,
 * shared xattrs or extra devices.
 *
 * @module
 */

/** `blkszbits`: 4 KiB blocks, the page size the kernel can mount everywhere. */
export const BLOCK_BITS = 12;
/** Block size (bytes). */
export const BLOCK_SIZE: number = 1 << BLOCK_BITS;
/** `EROFS_SUPER_OFFSET`: where the superblock starts in block 0. */
export const SUPERBLOCK_OFFSET = 1024;
/** `EROFS_SUPER_MAGIC_V1`. */
export const EROFS_MAGIC = 0xe0f5e1e2;
/** Inodes are addressed in 32-byte slots (`EROFS_ISLOTBITS` = 5): nid = byte offset in the metadata area / 32. */
export const INODE_SLOT = 32;

/** `struct erofs_super_block` (128 bytes). */
export const SUPER_BLOCK = {
  size: 128,
  /** __le32 magic */
  magic: 0,
  /** __le32 checksum (crc32c; only read with EROFS_FEATURE_COMPAT_SB_CHKSUM, which krunbox does not set) */
  checksum: 4,
  /** __le32 feature_compat */
  featureCompat: 8,
  /** __u8 blkszbits */
  blkszbits: 12,
  /** __u8 sb_extslots */
  sbExtslots: 13,
  /** __le16 root_nid */
  rootNid: 14,
  /** __le64 inos */
  inos: 16,
  /** __le64 build_time */
  buildTime: 24,
  /** __le32 build_time_nsec */
  buildTimeNsec: 32,
  /** __le32 blocks */
  blocks: 36,
  /** __le32 meta_blkaddr */
  metaBlkaddr: 40,
  /** __le32 xattr_blkaddr */
  xattrBlkaddr: 44,
  /** __u8 uuid[16] */
  uuid: 48,
  /** __u8 volume_name[16] */
  volumeName: 64,
  /** __le32 feature_incompat */
  featureIncompat: 80,
} as const;

/** `struct erofs_inode_extended` (64 bytes). */
export const INODE_EXTENDED = {
  size: 64,
  /** __le16 i_format: bit 0 the version (1 = extended), bits 1-3 the data layout */
  iFormat: 0,
  /** __le16 i_xattr_icount: 0, or 1 + (inline xattr bytes - 12) / 4 */
  iXattrIcount: 2,
  /** __le16 i_mode */
  iMode: 4,
  /** __le64 i_size */
  iSize: 8,
  /** union erofs_inode_i_u i_u: __le32 raw_blkaddr, or rdev for devices */
  iU: 16,
  /** __le32 i_ino */
  iIno: 20,
  /** __le32 i_uid */
  iUid: 24,
  /** __le32 i_gid */
  iGid: 28,
  /** __le64 i_mtime */
  iMtime: 32,
  /** __le32 i_mtime_nsec */
  iMtimeNsec: 40,
  /** __le32 i_nlink */
  iNlink: 44,
} as const;

/** `struct erofs_xattr_ibody_header` (12 bytes): starts an inode's inline xattrs. */
export const XATTR_IBODY_HEADER = {
  size: 12,
  /** __le32 h_name_filter (only read with EROFS_FEATURE_COMPAT_XATTR_FILTER, not set) */
  hNameFilter: 0,
  /** __u8 h_shared_count */
  hSharedCount: 4,
} as const;

/** `struct erofs_xattr_entry` (4 bytes, then the name suffix and the value; entries are 4-byte aligned). */
export const XATTR_ENTRY = {
  size: 4,
  /** __u8 e_name_len */
  eNameLen: 0,
  /** __u8 e_name_index */
  eNameIndex: 1,
  /** __le16 e_value_size */
  eValueSize: 2,
  /** char e_name[] */
  eName: 4,
} as const;

/** `struct erofs_dirent` (12 bytes, packed); names follow the block's dirents, sorted, not NUL-terminated. */
export const DIRENT = {
  size: 12,
  /** __le64 nid */
  nid: 0,
  /** __le16 nameoff: the name's offset in the directory block */
  nameoff: 8,
  /** __u8 file_type (FT_*) */
  fileType: 10,
} as const;

/** `i_format` bit 0 (`EROFS_I_VERSION_BIT`): `EROFS_INODE_LAYOUT_EXTENDED`. */
export const INODE_LAYOUT_EXTENDED = 1;
/** `i_format` bits 1-3 (`EROFS_I_DATALAYOUT_BIT` = 1). */
export const I_DATALAYOUT_BIT = 1;

/** The data layouts krunbox writes (`EROFS_INODE_FLAT_*`). */
export const DataLayout = {
  /** `EROFS_INODE_FLAT_PLAIN`: the data in whole blocks from `raw_blkaddr`. */
  FLAT_PLAIN: 0,
  /** `EROFS_INODE_FLAT_INLINE`: the (tail of the) data right after the inode and its xattrs. */
  FLAT_INLINE: 2,
} as const;

/** Most inline xattr bytes an inode can describe (`i_xattr_icount` is 16 bits; 0xffff is reserved). */
export const XATTR_BODY_MAX: number = XATTR_IBODY_HEADER.size + 0xfffe * 4;

/** Name indexes (`EROFS_XATTR_INDEX_*`) by the prefix they stand for; the rest of the name is stored. */
export const XATTR_PREFIXES: readonly (readonly [prefix: string, index: number])[] = [
  ["system.posix_acl_access", 2],
  ["system.posix_acl_default", 3],
  ["user.", 1],
  ["trusted.", 4],
  ["security.", 6],
];

/** The kinds of inode written, with their `file_type` (FT_*) and `S_IF*` mode bits. */
export const FILE_TYPE = { file: 1, dir: 2, char: 3, block: 4, fifo: 5, symlink: 7 } as const;
/** `S_IF*` of each kind. */
export const MODE_TYPE = {
  file: 0o100000,
  dir: 0o040000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
  symlink: 0o120000,
} as const;

/** What {@link encodeInode} writes. */
export interface InodeFields {
  /** {@link DataLayout}. */
  layout: number;
  /** Inline xattr bytes (header included), 0 for none. */
  xattrBytes: number;
  /** `S_IF*` | permission bits. */
  mode: number;
  size: number;
  /** `i_u`: first block, or the encoded device number. */
  u: number;
  ino: number;
  uid: number;
  gid: number;
  /** Modification time in seconds, possibly fractional. */
  mtime: number;
  nlink: number;
}

/** `i_xattr_icount` for `bytes` of inline xattrs. */
function xattrIcount(bytes: number): number {
  return bytes === 0 ? 0 : (bytes - XATTR_IBODY_HEADER.size) / 4 + 1;
}

/**
 * Writes one `erofs_inode_extended` at byte `at` of `view`; returns the
 * whole seconds of its mtime.
 *
 * @example
 * ```ts
 * import { encodeInode, INODE_EXTENDED, MODE_TYPE } from "./erofs_format.ts";
 * const view = new DataView(new ArrayBuffer(INODE_EXTENDED.size));
 * encodeInode(view, 0, {
 *   layout: 0, xattrBytes: 0, mode: MODE_TYPE.fifo | 0o600, size: 0, u: 0, ino: 1, uid: 0, gid: 0, mtime: 1.5, nlink: 1,
 * });
 * console.log(view.getUint32(INODE_EXTENDED.iMtimeNsec, true)); // 500000000
 * ```
 */
export function encodeInode(view: DataView, at: number, f: InodeFields): number {
  const I = INODE_EXTENDED;
  view.setUint16(at + I.iFormat, INODE_LAYOUT_EXTENDED | (f.layout << I_DATALAYOUT_BIT), true);
  view.setUint16(at + I.iXattrIcount, xattrIcount(f.xattrBytes), true);
  view.setUint16(at + I.iMode, f.mode, true);
  view.setBigUint64(at + I.iSize, BigInt(f.size), true);
  view.setUint32(at + I.iU, f.u >>> 0, true);
  view.setUint32(at + I.iIno, f.ino, true);
  view.setUint32(at + I.iUid, f.uid >>> 0, true);
  view.setUint32(at + I.iGid, f.gid >>> 0, true);
  const secs = Math.floor(Number.isFinite(f.mtime) ? f.mtime : 0);
  view.setBigInt64(at + I.iMtime, BigInt(secs), true);
  view.setUint32(at + I.iMtimeNsec, Math.min(999_999_999, Math.round((f.mtime - secs) * 1e9)) >>> 0, true);
  view.setUint32(at + I.iNlink, f.nlink, true);
  return secs;
}

/**
 * The `i_u` of a device node: the kernel's `new_encode_dev` (12-bit major,
 * 20-bit minor).
 *
 * @example
 * ```ts
 * import { encodeDevice } from "./erofs_format.ts";
 * console.log(encodeDevice(1, 3).toString(16)); // 103
 * ```
 */
export function encodeDevice(major: number, minor: number): number {
  return ((minor & 0xfff00) << 12) | ((major & 0xfff) << 8) | (minor & 0xff);
}

/** One inline xattr, its name already split into index and suffix. */
export interface XattrRecord {
  /** {@link XATTR_PREFIXES} index. */
  index: number;
  /** The name after the prefix (at most 255 bytes). */
  name: Uint8Array;
  /** The value (at most 65535 bytes). */
  value: Uint8Array;
}

/**
 * Bytes one xattr entry takes in an inode (4-byte aligned).
 *
 * @example
 * ```ts
 * import { xattrEntrySize } from "./erofs_format.ts";
 * console.log(xattrEntrySize(4, 5)); // 16
 * ```
 */
export function xattrEntrySize(nameBytes: number, valueBytes: number): number {
  return Math.ceil((XATTR_ENTRY.size + nameBytes + valueBytes) / 4) * 4;
}

/**
 * An inode's inline xattr body: `erofs_xattr_ibody_header` (no shared
 * xattrs, no name filter) and the entries; empty for none.
 *
 * @example
 * ```ts
 * import { encodeXattrBody } from "./erofs_format.ts";
 * const te = new TextEncoder();
 * console.log(encodeXattrBody([{ index: 1, name: te.encode("a"), value: te.encode("b") }]).length); // 20
 * ```
 */
export function encodeXattrBody(records: readonly XattrRecord[]): Uint8Array {
  if (records.length === 0) return new Uint8Array(0);
  const size = records.reduce<number>(
    (n, r) => n + xattrEntrySize(r.name.length, r.value.length),
    XATTR_IBODY_HEADER.size,
  );
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let off = XATTR_IBODY_HEADER.size;
  for (const r of records) {
    out[off + XATTR_ENTRY.eNameLen] = r.name.length;
    out[off + XATTR_ENTRY.eNameIndex] = r.index;
    view.setUint16(off + XATTR_ENTRY.eValueSize, r.value.length, true);
    out.set(r.name, off + XATTR_ENTRY.eName);
    out.set(r.value, off + XATTR_ENTRY.eName + r.name.length);
    off += xattrEntrySize(r.name.length, r.value.length);
  }
  return out;
}

/** One name of a directory block. */
export interface DirentRecord {
  nid: number;
  name: Uint8Array;
  /** {@link FILE_TYPE}. */
  fileType: number;
}

/**
 * Bytes a directory block's entries take (dirents, then names).
 *
 * @example
 * ```ts
 * import { direntBytes } from "./erofs_format.ts";
 * console.log(direntBytes([{ name: new Uint8Array(1) }, { name: new Uint8Array(2) }])); // 27
 * ```
 */
export function direntBytes(items: readonly { name: Uint8Array }[]): number {
  return items.reduce((n, it) => n + DIRENT.size + it.name.length, 0);
}

/**
 * Writes one directory block at `out[base…]`: every `erofs_dirent`, then
 * every name, in the order given (sorted by the caller).
 *
 * @example
 * ```ts
 * import { encodeDirBlock } from "./erofs_format.ts";
 * const out = new Uint8Array(4096);
 * encodeDirBlock(out, 0, [{ nid: 36, name: new TextEncoder().encode("."), fileType: 2 }]);
 * console.log(out[8]); // 12: the name follows the one dirent
 * ```
 */
export function encodeDirBlock(out: Uint8Array, base: number, items: readonly DirentRecord[]): void {
  const view = new DataView(out.buffer, out.byteOffset + base);
  let nameAt = items.length * DIRENT.size;
  items.forEach((it, i) => {
    const at = i * DIRENT.size;
    view.setBigUint64(at + DIRENT.nid, BigInt(it.nid), true);
    view.setUint16(at + DIRENT.nameoff, nameAt, true);
    view.setUint8(at + DIRENT.fileType, it.fileType);
    out.set(it.name, base + nameAt);
    nameAt += it.name.length;
  });
}

/** What {@link encodeSuperBlock} writes. */
export interface SuperBlockFields {
  rootNid: number;
  inos: number;
  /** Seconds; the newest mtime in the image. */
  buildTime: number;
  /** Blocks in the image. */
  blocks: number;
  /** First block of the metadata area (nids count from it). */
  metaBlkaddr: number;
  /** 16 bytes. */
  uuid: Uint8Array;
}

/**
 * The 128-byte superblock (no feature bits, no checksum), to be written at
 * {@link SUPERBLOCK_OFFSET}.
 *
 * @example
 * ```ts
 * import { encodeSuperBlock } from "./erofs_format.ts";
 * const sb = encodeSuperBlock({ rootNid: 0, inos: 1, buildTime: 0, blocks: 2, metaBlkaddr: 1, uuid: new Uint8Array(16) });
 * console.log(sb.length); // 128
 * ```
 */
export function encodeSuperBlock(f: SuperBlockFields): Uint8Array {
  const S = SUPER_BLOCK;
  const sb = new Uint8Array(S.size);
  const view = new DataView(sb.buffer);
  view.setUint32(S.magic, EROFS_MAGIC, true);
  view.setUint8(S.blkszbits, BLOCK_BITS);
  view.setUint16(S.rootNid, f.rootNid, true);
  view.setBigUint64(S.inos, BigInt(f.inos), true);
  view.setBigUint64(S.buildTime, BigInt(f.buildTime), true);
  view.setUint32(S.blocks, f.blocks, true);
  view.setUint32(S.metaBlkaddr, f.metaBlkaddr, true);
  sb.set(f.uuid.subarray(0, 16), S.uuid);
  return sb;
}
