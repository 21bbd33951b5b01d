/**
 * Streaming decompression driven by the reader, for the decoders krunbox
 * calls through FFI (ISA-L inflate, zstd). Each `pull` of the readable side
 * fills at most one output chunk, so at most {@link READ_AHEAD} chunks are
 * ever decoded ahead of the reader however well the input compresses;
 * compressed input waits in a queue of up to {@link IN_QUEUE} bytes, and
 * the writer waits beyond that. Decoder calls run on a worker thread
 * (`nonblocking` FFI), beside the reader on the main one.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { concatBytes } from "../util/bytes.ts";

/** Compressed bytes queued ahead of the decoder. */
export const IN_QUEUE = 16 << 20;
/** Output chunk size. */
export const OUT_CHUNK = 2 << 20;
/** Output chunks decoded ahead of the reader. */
export const READ_AHEAD = 4;

/**
 * One decoder's state. `run` must make progress (consume input or produce
 * output) whenever it is given both; it throws on corrupt input.
 *
 * @example
 * ```ts
 * import type { Codec } from "./decoder.ts";
 * // A codec that copies its input (what a "none" compression would be).
 * const copy: Codec = {
 *   run(input, out) {
 *     const n = Math.min(input.length, out.length);
 *     out.set(input.subarray(0, n));
 *     return Promise.resolve({ consumed: n, produced: n });
 *   },
 *   complete: () => true,
 *   close() {},
 * };
 * ```
 */
export interface Codec {
  /** Decodes from the start of `input` into the start of `out`. */
  run(input: Uint8Array, out: Uint8Array): Promise<{ consumed: number; produced: number }>;
  /** Whether the input so far ends where a compressed stream may end. */
  complete(): boolean;
  /** Frees the decoder (called once, at the end or on failure). */
  close(): void;
}

/**
 * A `TransformStream` over `codec`; input that ends mid-stream, and any
 * decoder failure, error it with `ImageError("IMAGE_INVALID")` saying
 * `"<what> is not valid <format>"`.
 *
 * @example
 * ```ts
 * import { type Codec, decoderStream } from "./decoder.ts";
 * // The copying codec of {@link Codec}'s example: what comes out is what went in.
 * const copy: Codec = {
 *   run(input, out) {
 *     const n = Math.min(input.length, out.length);
 *     out.set(input.subarray(0, n));
 *     return Promise.resolve({ consumed: n, produced: n });
 *   },
 *   complete: () => true,
 *   close() {},
 * };
 * const input = ReadableStream.from([new TextEncoder().encode("hello "), new TextEncoder().encode("world")]);
 * const text = await new Response(input.pipeThrough(decoderStream(copy, "greeting", "copy"))).text();
 * if (text !== "hello world") throw new Error(text);
 * ```
 */
export function decoderStream(codec: Codec, what: string, format: string): TransformStream<Uint8Array, Uint8Array> {
  let rest: Uint8Array = new Uint8Array(0); // input handed to the decoder, not consumed yet
  let queue: Uint8Array[] = [];
  let queued = 0;
  let ended = false;
  let failure: { reason: unknown } | undefined;
  let wakeReader: (() => void) | undefined;
  let wakeWriter: (() => void) | undefined;
  // The decoder is freed exactly once, and never under a call still running on the worker thread:
  // close() while a call runs leaves the freeing to the pull that made the call.
  let closed = false;
  let running = false;
  let freed = false;
  const free = () => {
    if (!freed) {
      freed = true;
      codec.close();
    }
  };
  const close = () => {
    closed = true;
    if (!running) free();
  };
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
    throwIfFailed();
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
            if (!codec.complete()) {
              throw new ImageError("IMAGE_INVALID", `${what} is not valid ${format}: it is truncated`);
            }
            close();
            return ctl.close();
          }
          throwIfFailed(); // a cancel may have come while input() resumed
          running = true;
          let step: { consumed: number; produced: number };
          try {
            step = await codec.run(rest, out.subarray(filled));
          } finally {
            running = false;
            if (closed) free();
          }
          throwIfFailed(); // cancelled or aborted during the call
          const { consumed, produced } = step;
          rest = rest.subarray(consumed);
          filled += produced;
        }
        ctl.enqueue(out.subarray(0, filled));
      } catch (e) {
        close();
        // An abort's or cancel's own reason passes through as it is (a network error is not a corrupt layer).
        const error = e instanceof ImageError || (failure && e === failure.reason)
          ? e
          : new ImageError("IMAGE_INVALID", `${what} is not valid ${format}: ${(e as Error).message}`, { cause: e });
        fail(error);
        throw error;
      }
    },
    cancel(reason) {
      fail(reason);
      close();
    },
  }, { highWaterMark: READ_AHEAD });
  return { writable, readable };
}
