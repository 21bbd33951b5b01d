/**
 * Writing frames to a connection in order. `Deno.Conn.write` may write part
 * of a buffer, and concurrent writes would interleave frames, so every frame
 * goes through one queue per connection.
 *
 * The queue is bounded in bytes: a peer that stops reading cannot make its
 * writer hold more than `maxQueuedBytes`. Past that the writer fails for
 * good, closes the connection and reports why through `onOverflow`.
 *
 * @module
 */

import { ProtocolError } from "../errors.ts";
import { DEFAULTS } from "../settings.ts";
import { closeQuietly } from "../util/close.ts";
import { encodeFrame, type RpcMessage } from "./frame.ts";
import { writeAll } from "../util/bytes.ts";

/**
 * A byte stream both ways: what the relay and a {@link FrameWriter} need of
 * a connection. A `Deno.Conn` is one; so is a child's stdin and stdout
 * (the qemu agent channel, src/vmm/channel.ts).
 */
export interface ByteChannel {
  /** The bytes the peer sends. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Writes some of `p` (maybe not all); resolves with how many bytes. */
  write(p: Uint8Array): Promise<number>;
  /** Ends both directions (an already-closed channel is not an error to the caller: see closeQuietly). */
  close(): void;
}

/** Options of a {@link FrameWriter}. */
export interface FrameWriterOptions {
  /** Bytes queued and not yet written before the writer gives up (default `DEFAULTS.agentWriteQueueBytes`). */
  readonly maxQueuedBytes?: number;
  /** Called once when the queue overflowed, with the error every later write rejects with. */
  readonly onOverflow?: (error: ProtocolError) => void;
  /** Names the peer in the overflow error (default "the peer"). */
  readonly peer?: string;
}

/**
 * An ordered, byte-bounded frame writer.
 *
 * @example
 * ```ts
 * import { FrameWriter } from "./writer.ts";
 * const path = `${await Deno.makeTempDir()}/peer.sock`;
 * const listener = Deno.listen({ transport: "unix", path });
 * const [conn, peer] = await Promise.all([Deno.connect({ transport: "unix", path }), listener.accept()]);
 * const w = new FrameWriter(conn, { maxQueuedBytes: 8 << 20, onOverflow: (e) => console.error(e.message) });
 * await w.write({ jsonrpc: "2.0", id: 1, method: "ping", params: {} });
 * console.log(w.queuedBytes); // 0
 * [conn, peer, listener].forEach((r) => r.close());
 * ```
 */
export class FrameWriter {
  #chain: Promise<void> = Promise.resolve();
  #failed: Error | undefined;
  #queued = 0;
  readonly #max: number;
  readonly #options: FrameWriterOptions;

  constructor(readonly conn: ByteChannel, options: FrameWriterOptions = {}) {
    this.#options = options;
    this.#max = options.maxQueuedBytes ?? DEFAULTS.agentWriteQueueBytes;
  }

  /** Bytes accepted and not yet written. */
  get queuedBytes(): number {
    return this.#queued;
  }

  /** Whether the writer has failed (the connection broke or the queue overflowed). */
  get failed(): boolean {
    return this.#failed !== undefined;
  }

  /** Resolves once every frame queued so far has been written (or failed). */
  flushed(): Promise<void> {
    return this.#chain;
  }

  /**
   * Queues a frame; resolves when it was written, rejects if the connection
   * failed, the queue is full or the frame is over the size limits (never
   * throws: a relayed header grown past 1 MiB fails only its own write).
   */
  write(header: RpcMessage, attachment?: Uint8Array): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    let bytes: Uint8Array;
    try {
      bytes = encodeFrame(header, attachment);
    } catch (e) {
      return Promise.reject(new ProtocolError(`frame not sent: ${(e as Error).message}`, { cause: e }));
    }
    if (this.#queued + bytes.length > this.#max) {
      const error = new ProtocolError(
        `${this.#options.peer ?? "the peer"} did not read ${this.#queued} queued bytes ` +
          `(limit ${this.#max}): connection closed`,
      );
      this.#failed = error;
      closeQuietly(this.conn);
      this.#options.onOverflow?.(error);
      return Promise.reject(error);
    }
    this.#queued += bytes.length;
    const done = this.#chain.then(async () => {
      try {
        if (this.#failed) throw this.#failed;
        await writeAll(this.conn, bytes);
      } catch (e) {
        this.#failed ??= e instanceof Error ? e : new Error(String(e));
        throw this.#failed;
      } finally {
        this.#queued -= bytes.length;
      }
    });
    this.#chain = done.catch(() => {});
    return done;
  }
}
