/**
 * zstd decompression of `tar+zstd` layer blobs through libzstd's streaming
 * API ({@link loadZstd}), driven by the reader ({@link decoderStream}).
 * Concatenated frames are read on; input that ends inside a frame, and
 * corrupt input, error the stream with `ImageError("IMAGE_INVALID")`.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { loadZstd, type Zstd, ZSTD_BUFFER, zstdLibrary } from "../../ffi/zstd.ts";
import { type Codec, decoderStream } from "./decoder.ts";

function zstdCodec(zstd: Zstd): Codec {
  const s = zstd.symbols;
  const ds = s.ZSTD_createDStream();
  if (ds === null) throw new ImageError("IMAGE_PULL", "ZSTD_createDStream failed (out of memory?)");
  s.ZSTD_initDStream(ds);
  const inBuf = new Uint8Array(ZSTD_BUFFER.size);
  const outBuf = new Uint8Array(ZSTD_BUFFER.size);
  const iv = new DataView(inBuf.buffer);
  const ov = new DataView(outBuf.buffer);
  const set = (view: DataView, bytes: Uint8Array) => {
    view.setBigUint64(ZSTD_BUFFER.ptr, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes))), true);
    view.setBigUint64(ZSTD_BUFFER.length, BigInt(bytes.length), true);
    view.setBigUint64(ZSTD_BUFFER.pos, 0n, true);
  };
  let atFrameEnd = true; // no input yet is a complete (empty) stream only until a frame starts
  let started = false;
  return {
    async run(input, out) {
      set(iv, input);
      set(ov, out);
      const rc = await s.ZSTD_decompressStream(ds, outBuf, inBuf);
      if (s.ZSTD_isError(rc)) {
        const name = s.ZSTD_getErrorName(rc);
        throw new Error(name === null ? `zstd error ${rc}` : new Deno.UnsafePointerView(name).getCString());
      }
      started = true;
      atFrameEnd = rc === 0n;
      return {
        consumed: Number(iv.getBigUint64(ZSTD_BUFFER.pos, true)),
        produced: Number(ov.getBigUint64(ZSTD_BUFFER.pos, true)),
      };
    },
    complete: () => started && atFrameEnd,
    close() {
      s.ZSTD_freeDStream(ds);
    },
  };
}

/**
 * Whether zstd layers can be read here, and why not.
 *
 * @example
 * ```ts
 * import { zstdSupport } from "./unzstd.ts";
 * const { ok, why } = zstdSupport();
 * console.log(ok ? "zstd layers ok" : why); // zstd layers ok (where libzstd loads)
 * ```
 */
export function zstdSupport(): { ok: boolean; why?: string } {
  return loadZstd() ? { ok: true } : { ok: false, why: `libzstd cannot be loaded: ${zstdLibrary.errors().join("; ")}` };
}

/**
 * A zstd decompressor for the layer named `what` (used in errors). Throws
 * `ImageError("IMAGE_PULL")` when libzstd cannot be loaded.
 *
 * @example
 * ```ts
 * import { unzstd } from "./unzstd.ts";
 * // `printf 'hello zstd\n' | zstd -c`
 * const zst = Uint8Array.from([
 *   40, 181, 47, 253, 4, 88, 89, 0, 0, 104, 101, 108, 108, 111, 32, 122, 115, 116, 100, 10, 108, 87, 249, 81,
 * ]);
 * const text = await new Response(ReadableStream.from([zst]).pipeThrough(unzstd("layer 1"))).text();
 * console.log(text); // hello zstd
 * if (text !== "hello zstd\n") throw new Error(text);
 * ```
 */
export function unzstd(what: string): TransformStream<Uint8Array, Uint8Array> {
  const zstd = loadZstd();
  if (!zstd) {
    throw new ImageError(
      "IMAGE_PULL",
      `${what} is zstd-compressed and ${zstdSupport().why}: apt-get install libzstd1, or set KRUNBOX_LIBZSTD_PATH`,
    );
  }
  return decoderStream(zstdCodec(zstd), what, "zstd");
}
