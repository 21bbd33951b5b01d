/**
 * zstd's streaming decompressor (`libzstd.so.1`, Debian package `libzstd1`)
 * for `tar+zstd` layers. One symbols table, C signature beside each entry;
 * `ZSTD_decompressStream` runs on a worker thread (`nonblocking`).
 *
 * `ZSTD_inBuffer` and `ZSTD_outBuffer` are `{ void *ptr; size_t size;
 * size_t pos; }` (24 bytes on 64-bit), filled by the caller.
 *
 * Search order: `KRUNBOX_LIBZSTD_PATH`, then the system's `libzstd.so.1`.
 *
 * @module
 */

import { OptionalLibrary } from "./load.ts";

const SYMBOLS = {
  // ZSTD_DStream *ZSTD_createDStream(void)
  ZSTD_createDStream: { parameters: [], result: "pointer" },
  // size_t ZSTD_freeDStream(ZSTD_DStream *zds)
  ZSTD_freeDStream: { parameters: ["pointer"], result: "usize" },
  // size_t ZSTD_initDStream(ZSTD_DStream *zds)
  ZSTD_initDStream: { parameters: ["pointer"], result: "usize" },
  // size_t ZSTD_decompressStream(ZSTD_DStream *zds, ZSTD_outBuffer *output, ZSTD_inBuffer *input)
  ZSTD_decompressStream: { parameters: ["pointer", "buffer", "buffer"], result: "usize", nonblocking: true },
  // unsigned ZSTD_isError(size_t code)
  ZSTD_isError: { parameters: ["usize"], result: "u32" },
  // const char *ZSTD_getErrorName(size_t code)
  ZSTD_getErrorName: { parameters: ["usize"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded library. */
export type Zstd = Deno.DynamicLibrary<typeof SYMBOLS>;

/** Size of `ZSTD_inBuffer` / `ZSTD_outBuffer`, and their field offsets. */
export const ZSTD_BUFFER = { size: 24, ptr: 0, length: 8, pos: 16 } as const;

/**
 * libzstd as an optional library (`KRUNBOX_LIBZSTD_PATH`, then `libzstd.so.1`).
 *
 * @example
 * ```ts
 * import { zstdLibrary } from "./zstd.ts";
 * console.log(zstdLibrary.load() ? zstdLibrary.path : zstdLibrary.errors()); // libzstd.so.1 where libzstd is installed
 * ```
 */
export const zstdLibrary: OptionalLibrary<typeof SYMBOLS> = new OptionalLibrary(
  "KRUNBOX_LIBZSTD_PATH",
  "libzstd.so.1",
  SYMBOLS,
);

/**
 * libzstd, loaded once; undefined when it cannot be loaded (see
 * `zstdLibrary.errors()`).
 *
 * @example
 * ```ts
 * import { loadZstd } from "./zstd.ts";
 * console.log(loadZstd() ? "zstd layers can be read" : "no libzstd"); // zstd layers can be read (where libzstd loads)
 * ```
 */
export function loadZstd(): Zstd | undefined {
  return zstdLibrary.load();
}
