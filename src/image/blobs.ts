/**
 * Layer blobs: streamed into a consumer (the layer's decompressor) from the
 * store when they are there, otherwise from the registry while being saved
 * to the store. Every byte is checked against the blob's digest on the way,
 * stored blobs included. One process at a time works on a blob (a lock
 * beside it), so pulls of different images sharing a layer never write the
 * same `.partial`. An interrupted download resumes from its `.partial`; a
 * registry that stops sending is given up after a while.
 *
 * @module
 */

import { ImageError, KrunboxError } from "../errors.ts";
import { lockWait } from "../store/lock.ts";
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from "../store/private.ts";
import { digestStream } from "./digest.ts";
import type { Descriptor } from "./oci.ts";
import type { RegistryClient } from "./registry.ts";
import { imagePaths } from "./store.ts";
import { DEFAULTS, settings } from "../settings.ts";

/** How often (bytes) a download reports progress. */
const PROGRESS_STEP = 1 << 20;
/** Give up on a blob another process has been downloading this long. */
const BLOB_LOCK_WAIT_MS = DEFAULTS.blobLockWaitMs;

/**
 * How long a download may go without a byte before it fails with
 * `IMAGE_PULL` (`KRUNBOX_PULL_STALL_MS`, default 60 s).
 *
 * @example
 * ```ts
 * import { stallTimeoutMs } from "./blobs.ts";
 * console.log(stallTimeoutMs()); // 60000 (the default, unless KRUNBOX_PULL_STALL_MS is set)
 * ```
 */
export function stallTimeoutMs(): number {
  return settings.pullStallMs();
}

/**
 * A stored blob that no longer matches its digest (it has been deleted):
 * the layer is worth one more try from the registry.
 *
 * @example
 * ```ts
 * import { StoredBlobDamagedError } from "./blobs.ts";
 * const retry = (e: unknown) => e instanceof StoredBlobDamagedError;
 * ```
 */
export class StoredBlobDamagedError extends ImageError {
  constructor(digest: string, cause: unknown) {
    super(
      "IMAGE_DIGEST_MISMATCH",
      `the stored copy of ${digest} was damaged (${(cause as Error).message}); it is deleted: pull again`,
      { cause },
    );
  }
}

/** What {@link streamBlob} reports. */
export type BlobProgress = (downloadedBytes: number, cached: boolean) => void;

/**
 * Feeds a consumer without waiting for each chunk to be processed (up to
 * its stream's high-water mark), so the download, the blob file and the
 * consumer run side by side. Once the consumer has failed (or is
 * {@link Feeder.stop}ped), chunks are dropped: the download goes on to its
 * digest check, so a corrupt download is reported as such rather than as
 * the broken archive it causes downstream.
 */
interface Feeder {
  write(chunk: Uint8Array): Promise<void>;
  close(): Promise<void>;
  /** Drops every further chunk and errors the consumer's input. */
  stop(reason: unknown): void;
}

function feeder(writer: WritableStreamDefaultWriter<Uint8Array>): Feeder {
  let dead = false;
  return {
    async write(chunk) {
      if (dead) return;
      try {
        await writer.ready;
      } catch {
        dead = true;
        return;
      }
      if (!dead) writer.write(chunk).catch(() => dead = true);
    },
    async close() {
      if (!dead) await writer.close().catch(() => {});
    },
    stop(reason) {
      dead = true;
      writer.abort(reason).catch(() => {});
    },
  };
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function* chain(...streams: ReadableStream<Uint8Array>[]): AsyncGenerator<Uint8Array> {
  for (const s of streams) yield* s;
}

/** A timer that aborts a signal when `touch` is not called for `ms` (`pause` stops it until the next `touch`). */
function stallGuard(ms: number, what: string) {
  const ctl = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const touch = () => {
    clearTimeout(timer);
    timer = setTimeout(
      () => ctl.abort(new ImageError("IMAGE_PULL", `${what}: the registry sent nothing for ${ms / 1000} s`)),
      ms,
    );
  };
  touch();
  const pause = () => clearTimeout(timer);
  return { signal: ctl.signal, touch, pause, [Symbol.dispose]: pause };
}

/**
 * Streams blob `layer` into `into`, closing it at the end; see the module
 * doc. Throws only for the blob itself (`IMAGE_PULL`, `IMAGE_DIGEST_MISMATCH`,
 * or `stop`'s reason); a stored blob that no longer matches its digest is
 * deleted, and the error says to pull again. `consumerFailed` settles when
 * the consumer gives up: its input is then errored and chunks are dropped.
 *
 * @example
 * ```ts ignore
 * // Needs a registry; tests/e2e/pull_test.ts streams every layer through it.
 * import { streamBlob } from "./blobs.ts";
 * import { RegistryClient } from "./registry.ts";
 * import { parseReference } from "./reference.ts";
 * const client = new RegistryClient(parseReference("127.0.0.1:5000/app:1"));
 * const { manifest } = await client.resolve();
 * const sink = new WritableStream<Uint8Array>();
 * await streamBlob(client, manifest.layers[0], sink, AbortSignal.timeout(60_000), Promise.withResolvers().promise);
 * ```
 */
export async function streamBlob(
  client: RegistryClient,
  layer: Descriptor,
  into: WritableStream<Uint8Array>,
  stop: AbortSignal,
  consumerFailed: Promise<unknown>,
  report: BlobProgress = () => {},
): Promise<void> {
  const out = feeder(into.getWriter());
  consumerFailed.then((reason) => out.stop(reason), () => {});
  try {
    const paths = imagePaths();
    const final = paths.blob(layer.digest);
    await Deno.mkdir(paths.blobs, { recursive: true, mode: PRIVATE_DIR_MODE });
    const lock = await lockWait(`${final}.lock`, BLOB_LOCK_WAIT_MS, stop);
    if (!lock) throw new ImageError("IMAGE_PULL", `another process has been downloading ${layer.digest} for 30 min`);
    try {
      const hasher = digestStream({ expected: layer.digest, expectedSize: layer.size, what: `layer ${layer.digest}` });
      if (await exists(final)) {
        report(layer.size, true);
        try {
          const file = await Deno.open(final, { read: true });
          for await (const chunk of file.readable.pipeThrough(hasher)) {
            stop.throwIfAborted();
            await out.write(chunk);
          }
        } catch (e) {
          if (!(e instanceof ImageError && e.code === "IMAGE_DIGEST_MISMATCH")) throw e;
          await Deno.remove(final).catch(() => {});
          throw new StoredBlobDamagedError(layer.digest, e);
        }
      } else {
        await download(client, layer, final, hasher, out, stop, report);
      }
      await out.close();
    } finally {
      lock.release();
    }
  } catch (e) {
    out.stop(e);
    throw e instanceof KrunboxError || stop.aborted
      ? e
      : new ImageError("IMAGE_PULL", `downloading ${layer.digest} failed: ${e}`, { cause: e });
  }
}

/** Downloads a blob into `final` (through its `.partial`), feeding `out` on the way. */
async function download(
  client: RegistryClient,
  layer: Descriptor,
  final: string,
  hasher: TransformStream<Uint8Array, Uint8Array>,
  out: Feeder,
  stop: AbortSignal,
  report: BlobProgress,
): Promise<void> {
  const partial = `${final}.partial`;
  let have = await Deno.stat(partial).then((s) => s.size, () => 0);
  if (have > layer.size) {
    await Deno.remove(partial); // longer than the blob: it cannot be a prefix of it
    have = 0;
  }
  using stall = stallGuard(stallTimeoutMs(), `layer ${layer.digest}`);
  const signal = AbortSignal.any([stop, stall.signal]);
  // A .partial as long as the blob needs no request: it is checked like any other.
  const { body, offset } = have > 0 && have === layer.size
    ? { body: ReadableStream.from<Uint8Array>([]), offset: have }
    : await client.blob(layer.digest, { offset: have, signal });
  const file = await Deno.open(partial, {
    write: true,
    create: true,
    truncate: offset === 0,
    append: offset > 0,
    mode: PRIVATE_FILE_MODE,
  });
  try {
    // The hash covers the whole blob: what is already on disk goes through it
    // (and on to the consumer) first, and is not written again.
    const prefix = offset > 0
      ? (await Deno.open(partial, { read: true })).readable
      : ReadableStream.from<Uint8Array>([]);
    let skip = offset;
    let downloaded = offset;
    let reported = 0;
    for await (const chunk of ReadableStream.from(chain(prefix, body)).pipeThrough(hasher)) {
      signal.throwIfAborted();
      // Only the registry's silence counts: the time the consumer takes to accept a chunk does not.
      stall.pause();
      await out.write(chunk);
      stall.touch();
      const drop = Math.min(skip, chunk.length);
      skip -= drop;
      // Synchronous: a 64 KiB write to the page cache costs less than the hop of an async op.
      for (let off = drop; off < chunk.length;) off += file.writeSync(chunk.subarray(off));
      downloaded += chunk.length - drop;
      if (downloaded - reported >= PROGRESS_STEP) {
        reported = downloaded;
        report(downloaded, false);
      }
    }
  } catch (e) {
    await body.cancel().catch(() => {}); // unread when the failure came first
    // A corrupt download must not be resumed: start over next time.
    if (e instanceof ImageError && e.code === "IMAGE_DIGEST_MISMATCH") await Deno.remove(partial).catch(() => {});
    throw signal.aborted && !stop.aborted ? signal.reason : e;
  } finally {
    file.close();
  }
  await Deno.rename(partial, final);
  report(layer.size, false);
}
