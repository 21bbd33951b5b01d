/**
 * A tiny tar writer for tests: ustar headers, pax extended headers (long
 * names, xattrs, arbitrary records), GNU long names, and the ustar prefix
 * field. It writes whatever it is told, so tests can craft hostile entries.
 *
 * @module
 */

import { concatBytes } from "../../src/util/bytes.ts";

/**
 * One member to write.
 *
 * @example
 * ```ts
 * import type { TarSpec } from "./tar_writer.ts";
 * const hostile: TarSpec[] = [{ name: "evil", type: "symlink", linkname: "/" }, { name: "evil/etc/x", data: "x" }];
 * ```
 */
export interface TarSpec {
  /** Member name, written verbatim (may hold `..`, a leading `/`, …). */
  name: string;
  /** Kind of member (default `file`). */
  type?: "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo";
  /** Raw typeflag, overriding `type`. */
  typeflag?: string;
  /** File content. */
  data?: Uint8Array | string;
  /** Permission bits (default 0644, 0755 for dirs). */
  mode?: number;
  /** Owner ids (default 0). */
  uid?: number;
  /** Group id (default 0). */
  gid?: number;
  /** Modification time in seconds (default 1700000000). */
  mtime?: number;
  /** Symlink or hard link target. */
  linkname?: string;
  /** Device numbers. */
  devmajor?: number;
  /** Device minor number. */
  devminor?: number;
  /** Extended attributes, written as `SCHILY.xattr.*` pax records. */
  xattrs?: Record<string, string | Uint8Array>;
  /** How a name or link target longer than 100 bytes is written (default `pax`). */
  long?: "pax" | "gnu" | "prefix";
  /** Extra pax records (forces a pax header). */
  pax?: Record<string, string>;
}

const enc = new TextEncoder();
const TYPEFLAGS = { file: "0", hardlink: "1", symlink: "2", char: "3", block: "4", dir: "5", fifo: "6" };

const concat = concatBytes;

function putString(b: Uint8Array, off: number, len: number, s: string | Uint8Array): void {
  const bytes = typeof s === "string" ? enc.encode(s) : s;
  b.set(bytes.subarray(0, len), off);
}

function putOctal(b: Uint8Array, off: number, len: number, v: number): void {
  putString(b, off, len, v.toString(8).padStart(len - 1, "0") + "\0");
}

/**
 * Recomputes a header block's checksum in place (after a test mutated it).
 *
 * @example
 * ```ts
 * import { fixChecksum } from "./tar_writer.ts";
 * const block = new Uint8Array(512);
 * fixChecksum(block);
 * ```
 */
export function fixChecksum(block: Uint8Array): void {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += block[i];
  putString(block, 148, 8, sum.toString(8).padStart(6, "0") + "\0 ");
}

interface RawHeader {
  name: string;
  typeflag: string;
  size: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  prefix?: string;
  gnu?: boolean;
}

function header(h: RawHeader): Uint8Array {
  const b = new Uint8Array(512);
  putString(b, 0, 100, h.name);
  putOctal(b, 100, 8, h.mode ?? 0o644);
  putOctal(b, 108, 8, h.uid ?? 0);
  putOctal(b, 116, 8, h.gid ?? 0);
  putOctal(b, 124, 12, h.size);
  putOctal(b, 136, 12, Math.floor(h.mtime ?? 1700000000));
  putString(b, 156, 1, h.typeflag);
  putString(b, 157, 100, h.linkname ?? "");
  putString(b, 257, 8, h.gnu ? "ustar  \0" : "ustar\x0000");
  putString(b, 265, 32, "root");
  putString(b, 297, 32, "root");
  putOctal(b, 329, 8, h.devmajor ?? 0);
  putOctal(b, 337, 8, h.devminor ?? 0);
  if (h.prefix) putString(b, 345, 155, h.prefix);
  fixChecksum(b);
  return b;
}

function padded(data: Uint8Array): Uint8Array {
  return concat([data, new Uint8Array((512 - (data.length % 512)) % 512)]);
}

/**
 * One pax record `"%d key=value\n"`, whose length counts its own digits.
 *
 * @example
 * ```ts
 * import { paxRecord } from "./tar_writer.ts";
 * console.log(new TextDecoder().decode(paxRecord("path", new TextEncoder().encode("a")))); // "9 path=a\n"
 * ```
 */
export function paxRecord(key: string, value: Uint8Array): Uint8Array {
  const rest = enc.encode(` ${key}=`).length + value.length + 1;
  let len = rest + 1;
  while (String(len).length + rest !== len) len = String(len).length + rest;
  return concat([enc.encode(`${len} ${key}=`), value, enc.encode("\n")]);
}

function member(s: TarSpec): Uint8Array[] {
  const type = s.type ?? "file";
  const data = typeof s.data === "string" ? enc.encode(s.data) : s.data ?? new Uint8Array();
  const gnu = s.long === "gnu";
  const out: Uint8Array[] = [];
  const pax: [string, Uint8Array][] = Object.entries(s.pax ?? {}).map(([k, v]) => [k, enc.encode(v)]);
  for (const [k, v] of Object.entries(s.xattrs ?? {})) {
    pax.push([`SCHILY.xattr.${k}`, typeof v === "string" ? enc.encode(v) : v]);
  }
  let name = s.name;
  let prefix = "";
  let linkname = s.linkname ?? "";
  if (enc.encode(name).length > 100) {
    if (s.long === "prefix") {
      const cut = name.lastIndexOf("/", name.length - 2);
      prefix = name.slice(0, cut);
      name = name.slice(cut + 1);
    } else if (gnu) {
      const body = enc.encode(s.name + "\0");
      out.push(header({ name: "././@LongLink", typeflag: "L", size: body.length, gnu }), padded(body));
      name = s.name.slice(0, 100);
    } else {
      pax.push(["path", enc.encode(name)]);
      name = name.slice(0, 100);
    }
  }
  if (enc.encode(linkname).length > 100) {
    if (gnu) {
      const body = enc.encode(linkname + "\0");
      out.push(header({ name: "././@LongLink", typeflag: "K", size: body.length, gnu }), padded(body));
    } else {
      pax.push(["linkpath", enc.encode(linkname)]);
    }
    linkname = linkname.slice(0, 100);
  }
  if (pax.length > 0) {
    const body = concat(pax.map(([k, v]) => paxRecord(k, v)));
    out.push(header({ name: `PaxHeaders/${name.slice(0, 80)}`, typeflag: "x", size: body.length }), padded(body));
  }
  out.push(header({
    name,
    prefix,
    gnu,
    typeflag: s.typeflag ?? TYPEFLAGS[type],
    size: data.length,
    mode: s.mode ?? (type === "dir" ? 0o755 : 0o644),
    uid: s.uid,
    gid: s.gid,
    mtime: s.mtime,
    linkname,
    devmajor: s.devmajor,
    devminor: s.devminor,
  }));
  if (data.length > 0) out.push(padded(data));
  return out;
}

/**
 * Writes members as one tar archive, ending with two zero blocks unless
 * `end` is false.
 *
 * @example
 * ```ts
 * import { writeTar } from "./tar_writer.ts";
 * const tar = writeTar([{ name: "etc/", type: "dir" }, { name: "etc/hostname", data: "box\n" }]);
 * console.log(tar.length); // 2048
 * ```
 */
export function writeTar(specs: readonly TarSpec[], options: { end?: boolean } = {}): Uint8Array {
  const parts = specs.flatMap(member);
  if (options.end !== false) parts.push(new Uint8Array(1024));
  return concat(parts);
}

/**
 * A stream of `bytes` cut into chunks of the given sizes (cycled), to
 * exercise readers across chunk boundaries.
 *
 * @example
 * ```ts
 * import { chunkedStream } from "./tar_writer.ts";
 * const s = chunkedStream(new Uint8Array(10), [1, 3]);
 * ```
 */
export function chunkedStream(
  bytes: Uint8Array,
  sizes: readonly number[] = [bytes.length || 1],
): ReadableStream<Uint8Array<ArrayBuffer>> {
  let off = 0;
  let i = 0;
  return new ReadableStream({
    pull(ctl) {
      if (off >= bytes.length) return ctl.close();
      const n = Math.max(1, sizes[i++ % sizes.length]);
      ctl.enqueue(bytes.slice(off, off + n));
      off += n;
    },
  }, { highWaterMark: 0 });
}

/**
 * A tar archive as a stream, each member encoded only when the reader asks
 * for more, so a test can feed gigabytes of hostile entries without holding
 * them: `specs` may be a generator. Ends with two zero blocks unless `end`
 * is false.
 *
 * @example
 * ```ts
 * import { tarStream } from "./tar_writer.ts";
 * function* flood() {
 *   for (let i = 0; i < 1000; i++) yield { name: `f${i}`, xattrs: { "user.x": "v".repeat(60_000) } };
 * }
 * const stream = tarStream(flood());
 * ```
 */
export function tarStream(
  specs: Iterable<TarSpec>,
  options: { end?: boolean } = {},
): ReadableStream<Uint8Array<ArrayBuffer>> {
  const it = specs[Symbol.iterator]();
  let done = false;
  return new ReadableStream({
    pull(ctl) {
      if (done) return ctl.close();
      const next = it.next();
      if (next.done) {
        done = true;
        if (options.end !== false) ctl.enqueue(new Uint8Array(1024));
        return;
      }
      ctl.enqueue(concat(member(next.value)));
    },
    cancel() {
      it.return?.();
    },
  }, { highWaterMark: 0 });
}
