/**
 * A streaming tar reader for OCI image layers: ustar, POSIX pax extended
 * headers (local and global) and GNU long names. Headers are checksummed;
 * a malformed or truncated archive fails with `ImageError("IMAGE_INVALID")`
 * naming the entry and its byte offset. Memory stays bounded: at most one
 * upstream chunk is held, plus pax/GNU metadata (each capped at
 * `KRUNBOX_PULL_MAX_PAX_BYTES`, 1 MiB by default, as are the pax records
 * in force at once); every byte read is counted against the image's
 * {@link PullUsage}.
 *
 * @module
 */

import { decodeName } from "./names.ts";
import { ImageError, KrunboxError } from "../errors.ts";
import { overCap, PullUsage } from "./limits.ts";

/**
 * The kinds of entries a layer can hold.
 *
 * @example
 * ```ts
 * import type { TarEntryType } from "./tar.ts";
 * const special: TarEntryType[] = ["char", "block", "fifo"];
 * ```
 */
export type TarEntryType = "file" | "hardlink" | "symlink" | "char" | "block" | "dir" | "fifo";

/**
 * One archive member: its header fields (pax and GNU overrides applied) and
 * its body. The body must be read before asking the iterator for the next
 * entry, or it is skipped; reading it afterwards throws.
 *
 * @example
 * ```ts
 * import { readTar, type TarEntry } from "./tar.ts";
 * async function sizeOf(entry: TarEntry): Promise<number> {
 *   let n = 0;
 *   for (let c = await entry.read(); c !== null; c = await entry.read()) n += c.length;
 *   return n;
 * }
 * // A one-file layer, made with the host's tar.
 * const dir = await Deno.makeTempDir();
 * await Deno.mkdir(`${dir}/etc`);
 * await Deno.writeTextFile(`${dir}/etc/os-release`, "ID=demo\n");
 * const args = ["-cf", "-", "-C", dir, "etc"];
 * const { stdout: tar } = await new Deno.Command("tar", { args, stdout: "piped" }).output();
 * const sizes: string[] = [];
 * for await (const e of readTar(ReadableStream.from([tar]))) sizes.push(`${e.name} ${await sizeOf(e)}`);
 * console.log(sizes); // [ "etc/ 0", "etc/os-release 8" ]
 * if (sizes[1] !== "etc/os-release 8") throw new Error(sizes.join());
 * ```
 */
export interface TarEntry {
  /** The member name as stored (not normalized; may start with `./` or `/`). */
  readonly name: string;
  /** The kind of member. */
  readonly type: TarEntryType;
  /** The target of a symlink or hard link; `""` otherwise. */
  readonly linkname: string;
  /** Permission bits including setuid, setgid and sticky (`mode & 0o7777`). */
  readonly mode: number;
  /** Owner user id. */
  readonly uid: number;
  /** Owner group id. */
  readonly gid: number;
  /** Owner user name, when recorded. */
  readonly uname: string;
  /** Owner group name, when recorded. */
  readonly gname: string;
  /** Body length in bytes (0 for every type but `file`). */
  readonly size: number;
  /** Modification time in seconds since the epoch, possibly fractional. */
  readonly mtime: number;
  /** Device major number (char and block devices). */
  readonly devmajor: number;
  /** Device minor number (char and block devices). */
  readonly devminor: number;
  /** Extended attributes from `SCHILY.xattr.*` pax records, name → raw value. */
  readonly xattrs: ReadonlyMap<string, Uint8Array>;
  /** Byte offset of this member's own header block in the (uncompressed) archive. */
  readonly offset: number;
  /** The next chunk of the body, `null` at its end. */
  read(): Promise<Uint8Array | null>;
  /** The whole body; fails with `IMAGE_INVALID` when it is larger than `maxBytes`. */
  bytes(maxBytes?: number): Promise<Uint8Array>;
  /** Discards the rest of the body. */
  skip(): Promise<void>;
  /** The body as a stream (created on first access; shares position with `read`). */
  readonly body: ReadableStream<Uint8Array>;
}

const BLOCK = 512;
const dec = new TextDecoder();

function invalid(message: string, cause?: unknown): ImageError {
  return new ImageError("IMAGE_INVALID", `invalid layer tar: ${message}`, { cause });
}

/** Pulls bytes from a stream, holding at most one upstream chunk, and counts each chunk against the usage. */
class Source {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #usage: PullUsage;
  #chunk: Uint8Array = new Uint8Array(0);
  #pos = 0;
  #eof = false;
  /** Bytes consumed so far. */
  offset = 0;

  constructor(stream: ReadableStream<Uint8Array>, usage: PullUsage) {
    this.#reader = stream.getReader();
    this.#usage = usage;
  }

  async #fill(): Promise<boolean> {
    while (this.#pos >= this.#chunk.length) {
      if (this.#eof) return false;
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await this.#reader.read();
      } catch (e) {
        if (e instanceof KrunboxError) throw e;
        throw invalid(`cannot read the layer stream at offset ${this.offset}: ${(e as Error)?.message ?? e}`, e);
      }
      if (r.done) {
        this.#eof = true;
        return false;
      }
      if (!(r.value instanceof Uint8Array)) throw new TypeError("layer stream chunks must be Uint8Array");
      this.#usage.chargeBytes(r.value.length);
      this.#chunk = r.value;
      this.#pos = 0;
    }
    return true;
  }

  /** Up to `max` bytes (a view into the current chunk), `null` at end of stream. */
  async take(max: number): Promise<Uint8Array | null> {
    if (!(await this.#fill())) return null;
    const n = Math.min(max, this.#chunk.length - this.#pos);
    const out = this.#chunk.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    this.offset += n;
    return out;
  }

  /** Exactly `n` bytes; `null` at a clean end of stream; throws when it ends midway. */
  async exact(n: number, what: () => string): Promise<Uint8Array | null> {
    const first = await this.take(n);
    if (first === null) return null;
    if (first.length === n) return first;
    const out = new Uint8Array(n);
    out.set(first);
    for (let got = first.length; got < n;) {
      const c = await this.take(n - got);
      if (c === null) throw invalid(`truncated archive: ${what()} ends at offset ${this.offset}`);
      out.set(c, got);
      got += c.length;
    }
    return out;
  }

  async skip(n: number, what: () => string): Promise<void> {
    while (n > 0) {
      const c = await this.take(n);
      if (c === null) throw invalid(`truncated archive: ${what()} ends at offset ${this.offset}`);
      n -= c.length;
    }
  }

  async drain(): Promise<void> {
    while (await this.take(Infinity) !== null) { /* discard trailing padding */ }
  }

  async close(): Promise<void> {
    try {
      await this.#reader.cancel();
    } catch { /* already errored or closed */ }
    this.#reader.releaseLock();
  }
}

class Entry implements TarEntry {
  readonly name: string;
  readonly type: TarEntryType;
  readonly linkname: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly uname: string;
  readonly gname: string;
  readonly size: number;
  readonly mtime: number;
  readonly devmajor: number;
  readonly devminor: number;
  readonly xattrs: ReadonlyMap<string, Uint8Array>;
  readonly offset: number;
  #src: Source;
  #remaining: number;
  #closed = false;
  #body?: ReadableStream<Uint8Array>;

  constructor(src: Source, h: Header, offset: number) {
    this.name = h.name;
    this.type = h.type;
    this.linkname = h.linkname;
    this.mode = h.mode;
    this.uid = h.uid;
    this.gid = h.gid;
    this.uname = h.uname;
    this.gname = h.gname;
    this.size = h.size;
    this.mtime = h.mtime;
    this.devmajor = h.devmajor;
    this.devminor = h.devminor;
    this.xattrs = h.xattrs;
    this.offset = offset;
    this.#src = src;
    this.#remaining = h.size;
  }

  #what = () => `body of "${this.name}" (header at offset ${this.offset})`;

  async read(): Promise<Uint8Array | null> {
    if (this.#closed) throw new Error(`tar entry "${this.name}" read after the iterator moved past it`);
    if (this.#remaining === 0) return null;
    const c = await this.#src.take(this.#remaining);
    if (c === null) throw invalid(`truncated archive: ${this.#what()} ends at offset ${this.#src.offset}`);
    this.#remaining -= c.length;
    return c;
  }

  async bytes(maxBytes = 16 << 20): Promise<Uint8Array> {
    if (this.#remaining > maxBytes) {
      throw invalid(`"${this.name}" (offset ${this.offset}) is ${this.size} bytes, more than ${maxBytes}`);
    }
    const out = new Uint8Array(this.#remaining);
    let got = 0;
    for (let c = await this.read(); c !== null; c = await this.read()) {
      out.set(c, got);
      got += c.length;
    }
    return out.subarray(0, got);
  }

  async skip(): Promise<void> {
    if (this.#closed) return;
    await this.#src.skip(this.#remaining, this.#what);
    this.#remaining = 0;
  }

  get body(): ReadableStream<Uint8Array> {
    return this.#body ??= new ReadableStream<Uint8Array>({
      pull: async (ctl) => {
        const c = await this.read();
        if (c === null) ctl.close();
        else ctl.enqueue(c);
      },
    }, { highWaterMark: 0 });
  }

  /** Skips the unread body and the block padding; the entry is dead afterwards. */
  async finish(): Promise<void> {
    await this.skip();
    this.#closed = true;
    await this.#src.skip((BLOCK - (this.size % BLOCK)) % BLOCK, this.#what);
  }
}

interface Header {
  name: string;
  type: TarEntryType;
  linkname: string;
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  size: number;
  mtime: number;
  devmajor: number;
  devminor: number;
  xattrs: Map<string, Uint8Array>;
}

function cstring(b: Uint8Array, start: number, len: number): string {
  const field = b.subarray(start, start + len);
  const nul = field.indexOf(0);
  return decodeName(nul < 0 ? field : field.subarray(0, nul));
}

/** Parses an octal (ASCII) or base-256 (GNU binary) numeric header field. */
function numeric(b: Uint8Array, start: number, len: number, field: string): number {
  const f = b.subarray(start, start + len);
  if (f[0] & 0x80) {
    const negative = f[0] === 0xff;
    let v = BigInt(f[0] & (negative ? 0xff : 0x7f));
    for (let i = 1; i < f.length; i++) v = (v << 8n) | BigInt(f[i]);
    if (negative) v -= 1n << BigInt(8 * f.length);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new RangeError(`${field} out of range`);
    }
    return Number(v);
  }
  let s = 0;
  let e = f.length;
  while (s < e && (f[s] === 0x20 || f[s] === 0)) s++;
  while (e > s && (f[e - 1] === 0x20 || f[e - 1] === 0)) e--;
  let v = 0;
  for (let i = s; i < e; i++) {
    const d = f[i] - 0x30;
    if (d < 0 || d > 7) throw new RangeError(`${field} is not an octal number`);
    v = v * 8 + d;
  }
  return v;
}

function checksumOk(b: Uint8Array): boolean {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const v = i >= 148 && i < 156 ? 0x20 : b[i];
    unsigned += v;
    signed += v > 127 ? v - 256 : v;
  }
  let stored: number;
  try {
    stored = numeric(b, 148, 8, "checksum");
  } catch {
    return false;
  }
  return stored === unsigned || stored === signed;
}

const TYPES: Record<string, TarEntryType> = {
  "0": "file",
  "\0": "file",
  "7": "file",
  "1": "hardlink",
  "2": "symlink",
  "3": "char",
  "4": "block",
  "5": "dir",
  "6": "fifo",
};

/** Parses `"%d %s=%s\n"` pax records; values stay bytes (xattrs are binary). */
function parsePax(body: Uint8Array, into: Map<string, Uint8Array>): void {
  let i = 0;
  while (i < body.length) {
    const sp = body.indexOf(0x20, i);
    if (sp < 0 || sp === i || sp - i > 12) throw new RangeError("pax record without a length");
    let len = 0;
    for (let j = i; j < sp; j++) {
      const d = body[j] - 0x30;
      if (d < 0 || d > 9) throw new RangeError("pax record length is not decimal");
      len = len * 10 + d;
    }
    const end = i + len;
    if (len <= sp - i + 1 || end > body.length || body[end - 1] !== 0x0a) {
      throw new RangeError("pax record length does not match its content");
    }
    const rec = body.subarray(sp + 1, end - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new RangeError("pax record without key=value");
    into.set(dec.decode(rec.subarray(0, eq)), rec.slice(eq + 1));
    i = end;
  }
}

function paxInt(v: string, key: string): number {
  if (!/^\d{1,16}$/.test(v) || Number(v) > Number.MAX_SAFE_INTEGER) throw new RangeError(`pax ${key} is invalid`);
  return Number(v);
}

/** Applies pax records (global first, then local) onto a parsed header. */
function applyPax(h: Header, records: Map<string, Uint8Array>): void {
  for (const [key, raw] of records) {
    if (key.startsWith("SCHILY.xattr.")) {
      const name = key.slice("SCHILY.xattr.".length);
      if (name) h.xattrs.set(name, raw);
      continue;
    }
    const v = decodeName(raw);
    if (v === "") continue; // an empty value unsets a global record: keep the header field
    switch (key) {
      case "path":
        h.name = v;
        break;
      case "linkpath":
        h.linkname = v;
        break;
      case "size":
        h.size = paxInt(v, key);
        break;
      case "uid":
        h.uid = paxInt(v, key);
        break;
      case "gid":
        h.gid = paxInt(v, key);
        break;
      case "uname":
        h.uname = v;
        break;
      case "gname":
        h.gname = v;
        break;
      case "mtime":
        if (!/^-?\d{1,16}(\.\d*)?$/.test(v)) throw new RangeError("pax mtime is invalid");
        h.mtime = Number(v);
        break;
    }
  }
}

/** Reads a special (pax / GNU) member's body into memory, bounded by the pax cap. */
async function readMeta(src: Source, size: number, what: () => string, usage: PullUsage): Promise<Uint8Array> {
  if (size > usage.caps.maxPaxBytes) throw overCap(usage.caps, "maxPaxBytes", `${what()} is ${size} bytes`);
  const body = (await src.exact(size, what)) ?? new Uint8Array(0);
  if (body.length < size) throw invalid(`truncated archive: ${what()} ends at offset ${src.offset}`);
  const copy = body.slice();
  await src.skip((BLOCK - (size % BLOCK)) % BLOCK, what);
  return copy;
}

/**
 * Reads a tar archive from a stream, one entry at a time. Each entry's body
 * must be consumed (or is skipped automatically) before the next is read.
 * The archive must end with its end-of-archive zero block; anything after
 * it is drained and ignored. Breaking out of the loop cancels the stream.
 * Every byte read counts against `usage` (the image's caps; by default
 * the settings'), so one usage shared by an image's layers caps the image.
 *
 * @example
 * ```ts
 * import { readTar } from "./tar.ts";
 * // A one-file layer, made with the host's tar.
 * const dir = await Deno.makeTempDir();
 * await Deno.mkdir(`${dir}/etc`);
 * await Deno.writeTextFile(`${dir}/etc/os-release`, "ID=demo\n");
 * const args = ["-cf", "-", "-C", dir, "etc"];
 * const { stdout: tar } = await new Deno.Command("tar", { args, stdout: "piped" }).output();
 * const stream = ReadableStream.from([tar]).pipeThrough(new CompressionStream("gzip"))
 *   .pipeThrough(new DecompressionStream("gzip"));
 * let osRelease = "";
 * for await (const entry of readTar(stream)) {
 *   console.log(entry.type, entry.name, entry.size); // dir etc/ 0, then file etc/os-release 8
 *   if (entry.type === "file" && entry.name === "etc/os-release") {
 *     osRelease = new TextDecoder().decode(await entry.bytes());
 *   }
 * }
 * if (osRelease !== "ID=demo\n") throw new Error(osRelease);
 * ```
 */
export async function* readTar(
  stream: ReadableStream<Uint8Array>,
  usage: PullUsage = new PullUsage(),
): AsyncGenerator<TarEntry, void, undefined> {
  const src = new Source(stream, usage);
  const maxPax = usage.caps.maxPaxBytes;
  const global = new Map<string, Uint8Array>();
  try {
    let local = new Map<string, Uint8Array>();
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const offset = src.offset;
      const block = await src.exact(BLOCK, () => `header block at offset ${offset}`);
      if (block === null) throw invalid(`truncated archive: no end-of-archive block (stream ends at offset ${offset})`);
      if (block.every((b) => b === 0)) {
        await src.drain();
        return;
      }
      const rawName = cstring(block, 0, 100);
      const where = `header "${rawName}" at offset ${offset}`;
      if (!checksumOk(block)) throw invalid(`bad header checksum: ${where}`);
      const flag = String.fromCharCode(block[156]);
      let h: Header;
      try {
        const magic = cstring(block, 257, 6);
        const version = cstring(block, 263, 2);
        const posix = magic === "ustar" && version === "00";
        const ustar = magic.startsWith("ustar"); // POSIX "ustar\0" or GNU "ustar "
        const prefix = posix ? cstring(block, 345, 155) : "";
        h = {
          name: prefix ? `${prefix}/${rawName}` : rawName,
          type: TYPES[flag],
          linkname: cstring(block, 157, 100),
          mode: numeric(block, 100, 8, "mode") & 0o7777,
          uid: numeric(block, 108, 8, "uid"),
          gid: numeric(block, 116, 8, "gid"),
          size: numeric(block, 124, 12, "size"),
          mtime: numeric(block, 136, 12, "mtime"),
          uname: ustar ? cstring(block, 265, 32) : "",
          gname: ustar ? cstring(block, 297, 32) : "",
          devmajor: ustar ? numeric(block, 329, 8, "devmajor") : 0,
          devminor: ustar ? numeric(block, 337, 8, "devminor") : 0,
          xattrs: new Map(),
        };
        if (h.size < 0) throw new RangeError("size is negative");
      } catch (e) {
        throw invalid(`${(e as Error).message}: ${where}`, e);
      }
      const what = () => `body of ${where}`;
      if (flag === "x" || flag === "g") {
        try {
          const records = flag === "g" ? global : local;
          parsePax(await readMeta(src, h.size, what, usage), records);
          let total = 0;
          for (const [k, v] of records) total += k.length + v.length;
          if (total > maxPax) {
            throw overCap(
              usage.caps,
              "maxPaxBytes",
              `the ${flag === "g" ? "global" : "local"} pax records at ${where} add up to ${total} bytes`,
            );
          }
        } catch (e) {
          if (e instanceof KrunboxError) throw e;
          throw invalid(`${(e as Error).message}: ${where}`, e);
        }
        continue;
      }
      if (flag === "L" || flag === "K") {
        const body = await readMeta(src, h.size, what, usage);
        const nul = body.indexOf(0);
        const value = decodeName(nul < 0 ? body : body.subarray(0, nul));
        if (flag === "L") longName = value;
        else longLink = value;
        continue;
      }
      if (h.type === undefined) throw invalid(`unsupported entry type ${JSON.stringify(flag)}: ${where}`);
      if (longName !== undefined) h.name = longName;
      if (longLink !== undefined) h.linkname = longLink;
      try {
        applyPax(h, global);
        applyPax(h, local);
      } catch (e) {
        throw invalid(`${(e as Error).message}: ${where}`, e);
      }
      if (flag === "\0" && h.name.endsWith("/")) h.type = "dir";
      if (h.type !== "file") h.size = 0; // header-only types carry no body (as Go's archive/tar)
      local = new Map();
      longName = longLink = undefined;
      const entry = new Entry(src, h, offset);
      yield entry;
      await entry.finish();
    }
  } finally {
    await src.close();
  }
}
