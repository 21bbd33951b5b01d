/**
 * A log file kept bounded on disk: two parts at most, `<file>.1` the older
 * and `<file>` the newer, the newest bytes last. When a write would take the
 * current part past the cap, the current part becomes `<file>.1` (replacing
 * the older one) and a new `<file>` starts; a single write larger than the
 * cap is split, so only its newest bytes survive. Writes from several
 * streams are queued in one order and share one size count, and a stream
 * drained with {@link BoundedLog.pipeFrom} waits for each of its chunks to
 * reach the disk (back-pressure, not memory). Those waiting writes are
 * bounded; writes nobody waits for that would queue past
 * {@link QUEUE_MAX_BYTES} are dropped, and the next written line says how
 * many bytes were.
 *
 * A descriptor of the process (fd 2) can follow the log too
 * ({@link BoundedLog.captureFd}): each new part is `dup2`ed onto it, so
 * what the runtime or native code writes there lands in the current part
 * straight from the kernel — nothing queued, nothing a crash can lose, and
 * a writer that is never held back (a pipe read by this process could stall
 * a native thread or lose its last words when the process dies). Those
 * bytes are counted by the part's size: it is checked before every queued
 * write and every {@link CHECK_MS}, and a part that a descriptor writer took
 * past the cap is rotated then and cut to its last cap bytes as it becomes
 * `<file>.1`. So between two checks the current part may exceed the cap by
 * what such a writer wrote meanwhile; at rest every part is within it.
 *
 * Closing never waits on the disk for long: {@link BoundedLog.flush} and
 * disposal give the queue a bounded time, then drop what is left.
 *
 * @module
 */

import { AT_FDCWD, loadLibc, O } from "../../ffi/libc.ts";
import { DEFAULTS } from "../settings.ts";
import { writeAll } from "./bytes.ts";
import { closeQuietly } from "./close.ts";
import { fileTail } from "./logs.ts";
import { createFresh } from "./nofollow.ts";

/** How often a log that a descriptor follows checks its current part's size. */
export const CHECK_MS = 50;
/** Bytes that may wait in the queue for writers that do not wait for the disk. */
export const QUEUE_MAX_BYTES = 4 << 20;
/** The smallest cap (a smaller one is raised to it). */
const MIN_CAP = 4096;
const encoder = new TextEncoder();

/** How a {@link BoundedLog} opens its file. */
export interface BoundedLogOptions {
  /** Start the current part empty (default: append to what it holds). */
  readonly truncate?: boolean;
}

/**
 * One bounded log file (two parts, the newest bytes last).
 *
 * @example
 * ```ts
 * import { BoundedLog } from "./bounded_log.ts";
 * const dir = await Deno.makeTempDir();
 * await using log = await BoundedLog.open(`${dir}/a.log`, 8192);
 * for (let i = 0; i < 1000; i++) log.write(`line ${i}\n`);
 * await log.flush(1000);
 * const kept = (await Deno.stat(`${dir}/a.log`)).size + (await Deno.stat(`${dir}/a.log.1`)).size;
 * console.log(kept <= 2 * 8192, (await Deno.readTextFile(`${dir}/a.log`)).endsWith("line 999\n")); // true true
 * ```
 */
export class BoundedLog implements AsyncDisposable {
  /** The current part's path (the older one is `${path}.1`). */
  readonly path: string;
  /** Bytes per part. */
  readonly capBytes: number;
  #out: Deno.FsFile;
  #size: number;
  #total = 0;
  #queued = 0;
  #dropped = 0;
  #tail: Promise<void> = Promise.resolve();
  #accepting = true;
  #closed = false;
  /** The descriptor each new part is `dup2`ed onto, if any. */
  #fd?: number;
  #timer?: ReturnType<typeof setInterval>;
  #checkQueued = false;

  private constructor(path: string, capBytes: number, out: Deno.FsFile, size: number) {
    this.path = path;
    this.capBytes = capBytes;
    this.#out = out;
    this.#size = size;
  }

  /** Opens (creating it 0600) the log at `path` with `capBytes` per part. */
  static async open(path: string, capBytes: number, options: BoundedLogOptions = {}): Promise<BoundedLog> {
    const out = options.truncate
      ? await Deno.open(path, { write: true, create: true, truncate: true, mode: 0o600 })
      : await Deno.open(path, { append: true, create: true, mode: 0o600 });
    const size = options.truncate ? 0 : (await out.stat()).size;
    return new BoundedLog(path, Math.max(MIN_CAP, Math.floor(capBytes)), out, size);
  }

  /** Bytes written through {@link write} so far (all parts, including what rotated away). */
  get totalBytes(): number {
    return this.#total;
  }

  /**
   * Queues `data` after every write before it; resolves once it is on disk
   * (or dropped: the log closed, or the queue over {@link QUEUE_MAX_BYTES}).
   * Never rejects.
   */
  write(data: Uint8Array | string): Promise<void> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    if (!this.#accepting || this.#queued + bytes.length > QUEUE_MAX_BYTES) {
      this.#dropped += bytes.length;
      return Promise.resolve();
    }
    this.#queued += bytes.length;
    return this.#enqueue(async () => {
      this.#queued -= bytes.length;
      if (this.#dropped > 0) {
        const note = encoder.encode(`[${this.#dropped} bytes of log dropped: the disk was slower than its writers]\n`);
        this.#dropped = 0;
        await this.#put(note);
      }
      await this.#put(bytes);
    });
  }

  /** Writes every chunk of `stream` in turn, each waiting for the disk; resolves at its end (errors end it quietly). */
  async pipeFrom(stream: ReadableStream<Uint8Array>): Promise<void> {
    try {
      for await (const chunk of stream) await this.write(chunk);
    } catch {
      // the stream broke (its process gone): nothing more to log
    }
  }

  /**
   * Makes descriptor `fd` (the process's stderr, 2) write into the current
   * part, now and after every rotation, its bytes counted by the part's
   * size. 0, or the errno when it could not (`ENOSYS`: no FFI): then `fd`
   * stays as it was.
   */
  captureFd(fd: number): number {
    const rc = this.#redirect(fd);
    if (rc !== 0) return rc;
    this.#fd = fd;
    const timer = this.#timer = setInterval(() => this.#check(), CHECK_MS);
    Deno.unrefTimer(timer);
    return 0;
  }

  /** Waits up to `ms` for every queued write to reach the disk; true when it did. */
  async flush(ms: number): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = await Promise.race([
      this.#tail.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms))),
    ]);
    clearTimeout(timer);
    return done;
  }

  /** Stops taking writes, gives the queued ones {@link DEFAULTS.logFlushMs}, then closes (a captured fd keeps the last part). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#accepting) return;
    this.#accepting = false;
    clearInterval(this.#timer);
    await this.flush(DEFAULTS.logFlushMs);
    this.#closed = true;
    closeQuietly(this.#out);
  }

  #enqueue(op: () => Promise<void>): Promise<void> {
    const run = this.#tail.then(() => (this.#closed ? undefined : op())).catch(() => {});
    this.#tail = run;
    return run;
  }

  /** The current part's size: counted, or (when a descriptor writes into it too) its size on disk. */
  #currentSize(): number {
    if (this.#fd === undefined) return this.#size;
    try {
      return this.#size = this.#out.statSync().size;
    } catch {
      return this.#size;
    }
  }

  async #put(bytes: Uint8Array): Promise<void> {
    for (let off = 0; off < bytes.length;) {
      let size = this.#currentSize();
      const rest = bytes.length - off;
      if (size > 0 && size + rest > this.capBytes) {
        await this.#rotate();
        size = 0;
      }
      const piece = bytes.subarray(off, off + Math.min(rest, this.capBytes - size));
      await writeAll(this.#out, piece);
      this.#size += piece.length;
      this.#total += piece.length;
      off += piece.length;
    }
  }

  /** A part a descriptor writer took to the cap is rotated (queued behind the writes before it). */
  #check(): void {
    if (this.#checkQueued || this.#closed) return;
    if (this.#currentSize() < this.capBytes) return;
    this.#checkQueued = true;
    this.#enqueue(async () => {
      this.#checkQueued = false;
      if (this.#currentSize() >= this.capBytes) await this.#rotate();
    });
  }

  /** The current part becomes `.1` (cut to the cap), a new one starts, and a captured fd follows it. */
  async #rotate(): Promise<void> {
    const older = `${this.path}.1`;
    await Deno.rename(this.path, older);
    const next = await Deno.open(this.path, { append: true, create: true, mode: 0o600 });
    if (this.#fd !== undefined) this.#redirect(this.#fd);
    closeQuietly(this.#out);
    this.#out = next;
    this.#size = 0;
    await this.#cut(older);
  }

  /** Keeps only the last `capBytes` of `part` (from a line start when one is near), if it grew past them. */
  async #cut(part: string): Promise<void> {
    const { bytes: tail, cut } = await fileTail(part, this.capBytes);
    if (!cut) return;
    const nl = tail.subarray(0, MIN_CAP).indexOf(10);
    const tmp = `${part}.tmp`;
    // Made anew, never through a link (the directory may have served a contained runner before).
    await createFresh(tmp, nl >= 0 ? tail.subarray(nl + 1) : tail);
    await Deno.rename(tmp, part);
  }

  /** `dup2`s a fresh append descriptor of the current part onto `fd`: 0 or the errno. */
  #redirect(fd: number): number {
    const libc = loadLibc();
    if (!libc) return 38; // ENOSYS
    const part = libc.openAt(AT_FDCWD, this.path, O.wronly | O.append);
    if (part < 0) return -part;
    const rc = libc.dup2(part, fd);
    libc.close(part);
    return rc;
  }
}
