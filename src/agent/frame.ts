/**
 * The frame codec of agent/PROTOCOL.md: `u32 BE header length`, `u32 BE
 * attachment length`, a JSON-RPC 2.0 header, raw attachment bytes.
 *
 * The decoder is incremental and never throws on bad input: it yields each
 * broken frame as a {@link FrameDecodeError} and resynchronises on the next
 * frame (the lengths are trustworthy even when the JSON is not), so one bad
 * frame costs only itself.
 *
 * @module
 */

/** Largest header accepted (1 MiB). */
export const MAX_HEADER = 1 << 20;
/** Largest attachment accepted (4 MiB). */
export const MAX_ATTACHMENT = 4 << 20;

/** A JSON-RPC 2.0 message as it appears in a frame header. */
export interface RpcMessage {
  jsonrpc: "2.0";
  id?: number | null;
  method?: string;
  params?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { code: number; message: string; data?: unknown };
}

/** One decoded frame. */
export interface Frame {
  readonly header: RpcMessage;
  readonly attachment: Uint8Array;
}

/** Why a frame could not be decoded. */
export type FrameErrorKind = "frame_too_large" | "parse_error" | "invalid_request" | "truncated";

/** A frame that could not be decoded; the decoder has skipped it. */
export interface FrameDecodeError {
  readonly error: FrameErrorKind;
  readonly message: string;
  /** How many consecutive broken frames of this kind it stands for ({@link FrameStream} merges them; default 1). */
  readonly count?: number;
}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Encodes one frame.
 *
 * @example
 * ```ts
 * import { encodeFrame } from "./frame.ts";
 * const bytes = encodeFrame({ jsonrpc: "2.0", id: 1, method: "ping", params: {} });
 * console.log(bytes.length); // 60 (a 4-byte length, then the JSON header)
 * if (bytes.length !== 60) throw new Error(String(bytes.length));
 * ```
 */
export function encodeFrame(header: RpcMessage, attachment: Uint8Array = new Uint8Array()): Uint8Array {
  const json = encoder.encode(JSON.stringify(header));
  if (json.length > MAX_HEADER) throw new RangeError(`frame header of ${json.length} bytes exceeds ${MAX_HEADER}`);
  if (attachment.length > MAX_ATTACHMENT) {
    throw new RangeError(`attachment of ${attachment.length} bytes exceeds ${MAX_ATTACHMENT}`);
  }
  const out = new Uint8Array(8 + json.length + attachment.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, json.length);
  view.setUint32(4, attachment.length);
  out.set(json, 8);
  out.set(attachment, 8 + json.length);
  return out;
}

function validate(value: unknown): RpcMessage | string {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "header is not a JSON object";
  const m = value as Record<string, unknown>;
  if (m.jsonrpc !== "2.0") return 'header lacks "jsonrpc": "2.0"';
  if (m.id !== undefined && m.id !== null && (typeof m.id !== "number" || !Number.isSafeInteger(m.id) || m.id < 0)) {
    return "id is not a non-negative integer";
  }
  if (m.method === undefined && m.result === undefined && m.error === undefined) {
    return "neither a request, a notification nor a response";
  }
  if (m.method !== undefined && typeof m.method !== "string") return "method is not a string";
  return m as unknown as RpcMessage;
}

/**
 * Incremental frame decoder: `push` bytes as they arrive, then call `next`
 * until it returns `undefined`; `finish` at end of stream reports a
 * truncated frame, if any.
 *
 * @example
 * ```ts
 * import { encodeFrame, FrameDecoder } from "./frame.ts";
 * const d = new FrameDecoder();
 * d.push(encodeFrame({ jsonrpc: "2.0", method: "ready", params: {} }));
 * console.log(d.next()); // { header: { jsonrpc: "2.0", method: "ready", params: {} }, attachment: Uint8Array(0) [] }
 * ```
 */
export class FrameDecoder {
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  /** Bytes of an oversized frame still to drop. */
  #skip = 0;

  /** Adds received bytes. */
  push(chunk: Uint8Array): void {
    if (this.#skip > 0) {
      const dropped = Math.min(this.#skip, chunk.length);
      this.#skip -= dropped;
      chunk = chunk.subarray(dropped);
      if (chunk.length === 0) return;
    }
    if (this.#end + chunk.length > this.#buf.length) {
      const live = this.#end - this.#start;
      const need = live + chunk.length;
      if (need > this.#buf.length || this.#start === 0) {
        const grown = new Uint8Array(Math.max(need, this.#buf.length * 2));
        grown.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = grown;
      } else {
        this.#buf.copyWithin(0, this.#start, this.#end);
      }
      this.#start = 0;
      this.#end = live;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /** The next complete frame or decode error, or `undefined` if more bytes are needed. */
  next(): Frame | FrameDecodeError | undefined {
    const avail = this.#end - this.#start;
    if (avail < 8) return undefined;
    const view = new DataView(this.#buf.buffer, this.#buf.byteOffset + this.#start, 8);
    const h = view.getUint32(0);
    const b = view.getUint32(4);
    if (h > MAX_HEADER || b > MAX_ATTACHMENT) {
      const total = 8 + h + b;
      const here = Math.min(total, avail);
      this.#start += here;
      this.#skip = total - here;
      this.#compactIfEmpty();
      return {
        error: "frame_too_large",
        message: `frame of ${h} header + ${b} attachment bytes exceeds ${MAX_HEADER} + ${MAX_ATTACHMENT}`,
      };
    }
    if (avail < 8 + h + b) return undefined;
    const headerBytes = this.#buf.subarray(this.#start + 8, this.#start + 8 + h);
    // Copy the attachment out: the buffer is reused.
    const attachment = this.#buf.slice(this.#start + 8 + h, this.#start + 8 + h + b);
    this.#start += 8 + h + b;
    this.#compactIfEmpty();
    if (h === 0) return { error: "invalid_request", message: "empty frame header" };
    let parsed: unknown;
    try {
      parsed = JSON.parse(strictDecoder.decode(headerBytes));
    } catch (e) {
      return { error: "parse_error", message: `frame header is not UTF-8 JSON: ${(e as Error).message}` };
    }
    const header = validate(parsed);
    if (typeof header === "string") return { error: "invalid_request", message: header };
    return { header, attachment };
  }

  /** At end of stream: the truncation error if a partial frame is buffered. */
  finish(): FrameDecodeError | undefined {
    const avail = this.#end - this.#start;
    if (avail === 0 && this.#skip === 0) return undefined;
    return { error: "truncated", message: `stream ended inside a frame (${avail} bytes buffered)` };
  }

  #compactIfEmpty() {
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }
}

/**
 * The one frame reader: bytes in, frames and decode errors out, in order. The
 * decoder state is private to the stream. A decode error is yielded, never
 * thrown, so each reader chooses its policy (the client ends the connection
 * on an oversized frame; the relay skips one from the guest and counts it);
 * an oversized frame is reported from its 8-byte prefix alone, before any of
 * it is buffered. At end of input a partial frame is yielded as `truncated`.
 * Consecutive broken frames of one kind in one chunk are yielded as one
 * error whose `count` says how many.
 *
 * @example
 * ```ts
 * import { encodeFrame, FrameStream } from "./frame.ts";
 * const bytes = encodeFrame({ jsonrpc: "2.0", method: "ready", params: {} });
 * for await (const f of ReadableStream.from([bytes]).pipeThrough(new FrameStream())) console.log(f); // { header: { jsonrpc: "2.0", method: "ready", … }, attachment: … }
 * ```
 */
export class FrameStream extends TransformStream<Uint8Array, Frame | FrameDecodeError> {
  constructor() {
    const decoder = new FrameDecoder();
    super({
      transform(chunk, controller) {
        decoder.push(chunk);
        // Consecutive broken frames of one kind go out as one error with a count: a flood of
        // 8-byte garbage frames costs one stream item per chunk, not one per frame.
        let run: { error: FrameErrorKind; message: string; count: number } | undefined;
        for (let f = decoder.next(); f; f = decoder.next()) {
          if (isDecodeError(f) && run?.error === f.error) {
            run.count++;
            continue;
          }
          if (run) controller.enqueue(run);
          run = undefined;
          if (isDecodeError(f)) run = { error: f.error, message: f.message, count: 1 };
          else controller.enqueue(f);
        }
        if (run) controller.enqueue(run);
      },
      flush(controller) {
        const tail = decoder.finish();
        if (tail) controller.enqueue(tail);
      },
    });
  }
}

/** What {@link FrameErrorCounts} keeps: totals per kind and the first few messages. */
export interface FrameErrorSummary {
  /** Broken frames (and error responses about ours) seen in all. */
  readonly total: number;
  /** The same, per kind (`agent` for id-less error responses the peer sent). */
  readonly byKind: Readonly<Partial<Record<FrameErrorKind | "agent", number>>>;
  /** The first {@link FrameErrorCounts.SAMPLES} messages, for diagnosis. */
  readonly samples: readonly string[];
}

/**
 * Bounded accounting of broken frames: counters and a few samples, so a
 * peer flooding garbage costs a fixed number of bytes, not one per frame.
 *
 * @example
 * ```ts
 * import { FrameErrorCounts } from "./frame.ts";
 * const c = new FrameErrorCounts();
 * for (let i = 0; i < 1000; i++) c.record("invalid_request", "empty frame header");
 * console.log(c.summary.total, c.summary.samples.length); // 1000 4
 * ```
 */
export class FrameErrorCounts {
  /** How many messages are kept. */
  static readonly SAMPLES = 4;
  #total = 0;
  readonly #byKind: Partial<Record<FrameErrorKind | "agent", number>> = {};
  readonly #samples: string[] = [];

  /** Counts `count` broken frames of one kind. */
  record(kind: FrameErrorKind | "agent", message: string, count = 1): void {
    this.#total += count;
    this.#byKind[kind] = (this.#byKind[kind] ?? 0) + count;
    if (this.#samples.length < FrameErrorCounts.SAMPLES) this.#samples.push(`${kind}: ${message.slice(0, 200)}`);
  }

  /** Broken frames so far. */
  get total(): number {
    return this.#total;
  }

  /** A snapshot of the counters. */
  get summary(): FrameErrorSummary {
    return { total: this.#total, byKind: { ...this.#byKind }, samples: [...this.#samples] };
  }
}

/**
 * Tells a decode error from a frame.
 *
 * @example
 * ```ts
 * import { FrameDecoder, isDecodeError } from "./frame.ts";
 * const f = new FrameDecoder().next();
 * if (f && isDecodeError(f)) console.log(f.error); // (nothing: an empty decoder has no frame yet)
 * ```
 */
export function isDecodeError(f: Frame | FrameDecodeError): f is FrameDecodeError {
  return "error" in f;
}
