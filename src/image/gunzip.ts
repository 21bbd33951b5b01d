/**
 * gzip decompression of layer blobs, as a `TransformStream`: ISA-L's
 * inflate through FFI ({@link loadIsal}) when the library is there, driven
 * by the reader ({@link decoderStream}), otherwise the runtime's
 * `DecompressionStream`. Broken input errors the stream with
 * `ImageError("IMAGE_INVALID")`. With ISA-L, concatenated gzip members are
 * read on and trailing zero padding is ignored; the built-in decompressor
 * refuses both (a typed error, never a short layer).
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { INFLATE_STATE, type Isal, ISAL_BLOCK_FINISH, ISAL_GZIP, loadIsal } from "../../ffi/isal.ts";
import { type Codec, decoderStream } from "./decoder.ts";
import { settings } from "../settings.ts";

/**
 * Which inflate {@link gunzip} uses: `"isal"` or `"builtin"`.
 * `KRUNBOX_GUNZIP=builtin` forces the runtime's.
 *
 * @example
 * ```ts
 * import { gunzipEngine } from "./gunzip.ts";
 * console.log(gunzipEngine()); // isal where ISA-L loads, else builtin
 * ```
 */
export function gunzipEngine(): "isal" | "builtin" {
  if (settings.builtinGunzip()) return "builtin";
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
 * const gz = ReadableStream.from([new TextEncoder().encode("hello gzip")]).pipeThrough(new CompressionStream("gzip"));
 * const text = await new Response(gz.pipeThrough(gunzip("layer 1"))).text();
 * console.log(text); // hello gzip
 * if (text !== "hello gzip") throw new Error(text);
 * ```
 */
export function gunzip(what: string): TransformStream<Uint8Array, Uint8Array> {
  const isal = gunzipEngine() === "isal" ? loadIsal() : undefined;
  return isal ? decoderStream(isalCodec(isal), what, "gzip") : builtinInflate(what);
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

/** ISA-L's inflate as a {@link Codec}: gzip members one after another, zero padding after the last. */
function isalCodec(isal: Isal): Codec {
  const state = new Uint8Array(INFLATE_STATE.size);
  const view = new DataView(state.buffer);
  const setPtr = (at: number, bytes: Uint8Array) =>
    view.setBigUint64(at, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes))), true);
  isal.symbols.isal_inflate_init(state);
  view.setUint32(INFLATE_STATE.crcFlag, ISAL_GZIP, true);
  let finished = false; // the last member ended with its trailer
  return {
    async run(input, out) {
      if (finished) {
        if (input.every((b) => b === 0)) return { consumed: input.length, produced: 0 }; // padding
        if (input[0] !== 0x1f || (input.length > 1 && input[1] !== 0x8b)) {
          throw new Error("unexpected data after the end of the gzip stream");
        }
        isal.symbols.isal_inflate_reset(state);
        view.setUint32(INFLATE_STATE.crcFlag, ISAL_GZIP, true);
        finished = false;
      }
      setPtr(INFLATE_STATE.nextIn, input);
      view.setUint32(INFLATE_STATE.availIn, input.length, true);
      setPtr(INFLATE_STATE.nextOut, out);
      view.setUint32(INFLATE_STATE.availOut, out.length, true);
      const rc = await isal.symbols.isal_inflate(state);
      if (rc < 0) throw new Error(`ISA-L inflate error ${rc}`);
      finished = view.getUint32(INFLATE_STATE.blockState, true) === ISAL_BLOCK_FINISH;
      return {
        consumed: input.length - view.getUint32(INFLATE_STATE.availIn, true),
        produced: out.length - view.getUint32(INFLATE_STATE.availOut, true),
      };
    },
    complete: () => finished,
    close() {},
  };
}
