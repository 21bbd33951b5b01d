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

/**
 * ISA-L inflate driven by the reader: each `pull` of the readable side
 * fills at most one output chunk, so at most {@link READ_AHEAD} chunks are
 * ever inflated ahead of the reader however well the input compresses.
 * Compressed input waits in a queue of up to {@link IN_QUEUE} bytes; the
 * writer waits beyond that.
 */
function isalInflate(isal: Isal, what: string): TransformStream<Uint8Array, Uint8Array> {
  const state = new Uint8Array(INFLATE_STATE.size);
  const view = new DataView(state.buffer);
  const setPtr = (at: number, bytes: Uint8Array) =>
    view.setBigUint64(at, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes))), true);
  isal.symbols.isal_inflate_init(state);
  view.setUint32(INFLATE_STATE.crcFlag, ISAL_GZIP, true);

  let rest: Uint8Array = new Uint8Array(0); // input handed to inflate, not consumed yet
  let queue: Uint8Array[] = [];
  let queued = 0;
  let ended = false;
  let failure: { reason: unknown } | undefined;
  let finished = false; // the last member ended with its trailer
  let wakeReader: (() => void) | undefined;
  let wakeWriter: (() => void) | undefined;
  const fail = (reason: unknown) => {
    failure ??= { reason };
    wakeReader?.();
    wakeWriter?.();
  };
  const throwIfFailed = () => {
    if (failure) throw failure.reason;
  };

  const writable = new WritableStream<Uint8Array>({
    async write(chunk) {
      throwIfFailed();
      queue.push(chunk);
      queued += chunk.length;
      wakeReader?.();
      while (queued >= IN_QUEUE && !failure) await new Promise<void>((r) => wakeWriter = r);
      throwIfFailed();
    },
    close() {
      ended = true;
      wakeReader?.();
    },
    abort: fail,
  });

  /** Makes `rest` non-empty; false at the end of the input. */
  async function input(): Promise<boolean> {
    while (rest.length === 0) {
      throwIfFailed();
      if (queue.length > 0) {
        rest = queue.length === 1 ? queue[0] : concatBytes(queue);
        queue = [];
        queued = 0;
        wakeWriter?.();
      } else if (ended) {
        return false;
      } else {
        await new Promise<void>((r) => wakeReader = r);
        wakeReader = undefined;
      }
    }
    return true;
  }

  const readable = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      try {
        // Fill one output chunk; hand over what there is rather than wait for more input.
        const out = new Uint8Array(OUT_CHUNK);
        let filled = 0;
        while (filled < OUT_CHUNK) {
          if (filled > 0 && rest.length === 0 && queue.length === 0) break;
          if (!(await input())) {
            if (filled > 0) break;
            if (!finished) throw invalid(what, "the stream is truncated");
            return ctl.close();
          }
          if (finished) {
            if (rest.every((b) => b === 0)) { // padding after the last member
              rest = new Uint8Array(0);
              continue;
            }
            if (rest[0] !== 0x1f || (rest.length > 1 && rest[1] !== 0x8b)) {
              throw invalid(what, "unexpected data after the end of the gzip stream");
            }
            isal.symbols.isal_inflate_reset(state);
            view.setUint32(INFLATE_STATE.crcFlag, ISAL_GZIP, true);
            finished = false;
          }
          setPtr(INFLATE_STATE.nextIn, rest);
          view.setUint32(INFLATE_STATE.availIn, rest.length, true);
          setPtr(INFLATE_STATE.nextOut, out.subarray(filled));
          view.setUint32(INFLATE_STATE.availOut, OUT_CHUNK - filled, true);
          const rc = await isal.symbols.isal_inflate(state);
          if (rc < 0) throw invalid(what, `ISA-L inflate error ${rc}`);
          filled = OUT_CHUNK - view.getUint32(INFLATE_STATE.availOut, true);
          rest = rest.subarray(rest.length - view.getUint32(INFLATE_STATE.availIn, true));
          finished = view.getUint32(INFLATE_STATE.blockState, true) === ISAL_BLOCK_FINISH;
        }
        ctl.enqueue(out.subarray(0, filled));
      } catch (e) {
        fail(e);
        throw e;
      }
    },
    cancel: fail,
  }, { highWaterMark: READ_AHEAD });
  return { writable, readable };
}
