/**
 * gzip decompression of layer blobs, as a `TransformStream`: ISA-L's
 * inflate through FFI ({@link loadIsal}) when the library is there, each
 * call on a worker thread so inflating overlaps the tar reader, otherwise
 * the runtime's `DecompressionStream`. Broken input errors the stream with
 * `ImageError("IMAGE_INVALID")`. With ISA-L, concatenated gzip members are
 * read on and trailing zero padding is ignored; the built-in decompressor
 * refuses both (a typed error, never a short layer).
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { concatBytes } from "../util/bytes.ts";
import { INFLATE_STATE, type Isal, ISAL_BLOCK_FINISH, ISAL_GZIP, loadIsal } from "../../ffi/isal.ts";

/** Compressed bytes queued ahead of inflate. */
const IN_QUEUE = 16 << 20;
/** Input is handed to inflate in batches of at least this many bytes. */
const IN_BATCH = 512 << 10;
/** Output chunk size. */
const OUT_CHUNK = 2 << 20;
/** Output chunks inflated ahead of the reader. */
const READ_AHEAD = 4;

/**
 * Which inflate {@link gunzip} uses: `"isal"` or `"builtin"`.
 * `KRUNBOX_GUNZIP=builtin` forces the runtime's.
 *
 * @example
 * ```ts
 * import { gunzipEngine } from "./gunzip.ts";
 * console.log(gunzipEngine());
 * ```
 */
export function gunzipEngine(): "isal" | "builtin" {
  if (Deno.env.get("KRUNBOX_GUNZIP") === "builtin") return "builtin";
  return loadIsal() ? "isal" : "builtin";
}

function invalid(what: string, detail: string, cause?: unknown): ImageError {
  return new ImageError("IMAGE_INVALID", `${what} is not valid gzip: ${detail}`, { cause });
}

/**
 * A gzip decompressor for the layer named `what` (used in errors).
 *
 * @example
 * ```ts
 * import { gunzip } from "./gunzip.ts";
 * const file = await Deno.open("layer.tar.gz");
 * for await (const chunk of file.readable.pipeThrough(gunzip("layer.tar.gz"))) console.log(chunk.length);
 * ```
 */
export function gunzip(what: string): TransformStream<Uint8Array, Uint8Array> {
  const isal = gunzipEngine() === "isal" ? loadIsal() : undefined;
  return isal ? isalInflate(isal, what) : builtinInflate(what);
}

function builtinInflate(what: string): TransformStream<Uint8Array, Uint8Array> {
  const ds = new DecompressionStream("gzip") as unknown as TransformStream<Uint8Array, Uint8Array>;
  const reader = ds.readable.getReader();
  const readable = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      try {
        const { value, done } = await reader.read();
        if (done) ctl.close();
        else ctl.enqueue(value);
      } catch (e) {
        ctl.error(invalid(what, (e as Error).message, e));
      }
    },
    cancel: (reason) => reader.cancel(reason),
  });
  return { writable: ds.writable, readable };
}

function isalInflate(isal: Isal, what: string): TransformStream<Uint8Array, Uint8Array> {
  const state = new Uint8Array(INFLATE_STATE.size);
  const view = new DataView(state.buffer);
  const setPtr = (at: number, bytes: Uint8Array) =>
    view.setBigUint64(at, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes))), true);
  const start = () => {
    view.setUint32(INFLATE_STATE.crcFlag, ISAL_GZIP, true);
  };
  isal.symbols.isal_inflate_init(state);
  start();
  let finished = false; // the last member ended with its trailer
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;

  async function feed(input: Uint8Array, ctl: TransformStreamDefaultController<Uint8Array>): Promise<void> {
    let rest = input;
    while (rest.length > 0) {
      if (finished) {
        if (rest.every((b) => b === 0)) return; // padding after the last member
        if (rest[0] !== 0x1f || (rest.length > 1 && rest[1] !== 0x8b)) {
          throw invalid(what, "unexpected data after the end of the gzip stream");
        }
        isal.symbols.isal_inflate_reset(state);
        start();
        finished = false;
      }
      setPtr(INFLATE_STATE.nextIn, rest);
      view.setUint32(INFLATE_STATE.availIn, rest.length, true);
      for (;;) {
        const out = new Uint8Array(OUT_CHUNK);
        setPtr(INFLATE_STATE.nextOut, out);
        view.setUint32(INFLATE_STATE.availOut, OUT_CHUNK, true);
        const rc = await isal.symbols.isal_inflate(state);
        if (rc < 0) throw invalid(what, `ISA-L inflate error ${rc}`);
        const produced = OUT_CHUNK - view.getUint32(INFLATE_STATE.availOut, true);
        if (produced > 0) ctl.enqueue(out.subarray(0, produced));
        const left = view.getUint32(INFLATE_STATE.availIn, true);
        rest = rest.subarray(rest.length - left);
        if (view.getUint32(INFLATE_STATE.blockState, true) === ISAL_BLOCK_FINISH) {
          finished = true;
          break;
        }
        if (produced < OUT_CHUNK && left === 0) return;
      }
    }
  }

  async function drain(ctl: TransformStreamDefaultController<Uint8Array>): Promise<void> {
    const input = pending.length === 1 ? pending[0] : concatBytes(pending);
    pending = [];
    pendingBytes = 0;
    await feed(input, ctl);
  }

  return new TransformStream<Uint8Array, Uint8Array>(
    {
      async transform(chunk, ctl) {
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= IN_BATCH) await drain(ctl);
      },
      async flush(ctl) {
        await drain(ctl);
        if (!finished) throw invalid(what, "the stream is truncated");
      },
    },
    new ByteLengthQueuingStrategy({ highWaterMark: IN_QUEUE }),
    { highWaterMark: READ_AHEAD },
  );
}
