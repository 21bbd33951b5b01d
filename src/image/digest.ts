/**
 * Content digests: a pass-through stream that hashes (and, given the
 * digest and size a blob must have, verifies) what flows through it, and
 * the digest of bytes in hand.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { ImageError } from "../errors.ts";
import { checkDigest, type DigestAlgorithm } from "./reference.ts";

/**
 * Hashes a byte stream while passing it through unchanged, so a blob can be
 * verified while it is streamed into decompression. When `expected` (and/or
 * `expectedSize`) is given the stream errors with
 * `ImageError("IMAGE_DIGEST_MISMATCH")` at the end on a mismatch (or as
 * soon as the stream grows past `expectedSize`), so consumers downstream see
 * the failure; read {@link DigestStream.digest} and
 * {@link DigestStream.bytes} once it has finished.
 *
 * @example
 * ```ts
 * import { DigestStream } from "./digest.ts";
 * const hasher = new DigestStream();
 * await new Blob(["hello"]).stream().pipeThrough(hasher).pipeTo(new WritableStream());
 * console.log(hasher.digest, hasher.bytes); // sha256:2cf24dba… 5
 * ```
 */
export class DigestStream extends TransformStream<Uint8Array, Uint8Array<ArrayBuffer>> {
  /** Hash algorithm, from `expected` (default sha256). */
  readonly algorithm: DigestAlgorithm;
  readonly #state: { bytes: number; digest?: string; update(chunk: Uint8Array): void };

  /** A pass-through hasher; see {@link DigestStreamOptions}. */
  constructor(options: DigestStreamOptions = {}) {
    const algorithm = options.expected === undefined ? "sha256" : checkDigest(options.expected, "expected digest");
    const hash = createHash(algorithm);
    const what = options.what ?? "blob";
    const state: { bytes: number; digest?: string; update(chunk: Uint8Array): void } = {
      bytes: 0,
      update(chunk: Uint8Array) {
        state.bytes += chunk.byteLength;
        if (options.expectedSize !== undefined && state.bytes > options.expectedSize) {
          throw new ImageError(
            "IMAGE_DIGEST_MISMATCH",
            `${what}${
              options.expected ? ` ${options.expected}` : ""
            } is larger than the expected ${options.expectedSize} bytes`,
          );
        }
        hash.update(chunk);
      },
    };
    super({
      transform(chunk, controller) {
        state.update(chunk);
        // fetch bodies and files yield ArrayBuffer-backed chunks; copy the rare shared-memory one
        controller.enqueue(chunk.buffer instanceof ArrayBuffer ? chunk as Uint8Array<ArrayBuffer> : chunk.slice());
      },
      flush() {
        state.digest = `${algorithm}:${hash.digest("hex")}`;
        if (options.expectedSize !== undefined && state.bytes !== options.expectedSize) {
          throw new ImageError(
            "IMAGE_DIGEST_MISMATCH",
            `${what}${
              options.expected ? ` ${options.expected}` : ""
            } has ${state.bytes} bytes, expected ${options.expectedSize}`,
          );
        }
        if (options.expected !== undefined && state.digest !== options.expected) {
          throw new ImageError(
            "IMAGE_DIGEST_MISMATCH",
            `${what} digest mismatch: expected ${options.expected}, got ${state.digest} (${state.bytes} bytes)`,
          );
        }
      },
    });
    this.algorithm = algorithm;
    this.#state = state;
  }

  /**
   * Hashes bytes that are not streamed through (e.g. the part of a resumed
   * download already on disk). Call it before any chunk flows.
   *
   * @example
   * ```ts
   * import { DigestStream } from "./digest.ts";
   * const hasher = new DigestStream();
   * hasher.feed(new TextEncoder().encode("hel"));
   * await new Blob(["lo"]).stream().pipeThrough(hasher).pipeTo(new WritableStream());
   * console.log(hasher.bytes); // 5
   * ```
   */
  feed(bytes: Uint8Array): void {
    if (this.#state.digest !== undefined) throw new Error("DigestStream.feed() after the stream finished");
    this.#state.update(bytes);
  }

  /** Bytes hashed so far. */
  get bytes(): number {
    return this.#state.bytes;
  }

  /** `algorithm:hex` of everything hashed; throws until the stream has finished. */
  get digest(): string {
    if (this.#state.digest === undefined) throw new Error("DigestStream.digest read before the stream finished");
    return this.#state.digest;
  }

  /** Whether the stream has finished and {@link DigestStream.digest} is available. */
  get done(): boolean {
    return this.#state.digest !== undefined;
  }
}

/**
 * Options of {@link DigestStream} / {@link digestStream}.
 *
 * @example
 * ```ts
 * import { digestStream, type DigestStreamOptions } from "./digest.ts";
 * const options: DigestStreamOptions = { expected: "sha256:" + "0".repeat(64), expectedSize: 1234, what: "layer 1" };
 * const hasher = digestStream(options);
 * ```
 */
export interface DigestStreamOptions {
  /** The digest the bytes must have; also picks the algorithm. */
  expected?: string;
  /** The exact size the bytes must have. */
  expectedSize?: number;
  /** What the bytes are, for error messages (default "blob"). */
  what?: string;
}

/**
 * Creates a {@link DigestStream}: a pass-through TransformStream that
 * hashes what flows through it and, with `expected`, errors on a mismatch.
 *
 * @example
 * ```ts
 * import { digestStream } from "./digest.ts";
 * const blob = new TextEncoder().encode("hello");
 * const expected = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
 * const hasher = digestStream({ expected, expectedSize: blob.length });
 * await ReadableStream.from([blob]).pipeThrough(hasher).pipeTo(new WritableStream());
 * console.log(hasher.digest === expected, hasher.bytes); // true 5
 * // A wrong digest errors the pipe with IMAGE_DIGEST_MISMATCH:
 * const wrong = digestStream({ expected: "sha256:" + "0".repeat(64) });
 * const err = await ReadableStream.from([blob]).pipeThrough(wrong).pipeTo(new WritableStream()).catch((e) => e);
 * console.log(err.code); // IMAGE_DIGEST_MISMATCH
 * if (err.code !== "IMAGE_DIGEST_MISMATCH") throw new Error(String(err));
 * ```
 */
export function digestStream(options: DigestStreamOptions = {}): DigestStream {
  return new DigestStream(options);
}

/**
 * The digest (`sha256:<hex>` by default) of some bytes.
 *
 * @example
 * ```ts
 * import { digestOf } from "./digest.ts";
 * console.log(digestOf(new TextEncoder().encode("{}"))); // sha256:44136fa3…
 * ```
 */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = "sha256"): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest("hex")}`;
}
