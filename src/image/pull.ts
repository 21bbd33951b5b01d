/**
 * Pulling an image into the store: resolve the reference, then stream every
 * layer (at most three at once) from the registry through its digest check
 * into the blob store and, in the same pass, through gzip and the tar
 * reader into the image's EROFS lower: large files land in its data area
 * as they arrive, the rest is held as records. The layers are applied in
 * order to an in-memory tree, whose metadata completes the lower. Nothing
 * is unpacked onto the host. A `.partial` download is resumed after an
 * interruption; a cached blob is read from the store. Progress is reported
 * as events.
 *
 * One image directory per manifest digest, built under a lock and renamed
 * into place when complete, so concurrent pulls of one image build it once
 * and a failed pull leaves nothing that looks complete.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { ImageError, KrunboxError } from "../errors.ts";
import type { Store } from "../store/db.ts";
import { lockWait } from "../store/lock.ts";
import { parseReference } from "./reference.ts";
import {
  type BasicAuth,
  type Descriptor,
  digestStream,
  type ImageConfig,
  RegistryClient,
  type ResolvedImage,
} from "./registry.ts";
import { gunzip } from "./gunzip.ts";
import { LowerBuilder } from "./lower.ts";
import { imagePaths } from "./store.ts";
import type { LayerEntry } from "./tree.ts";

/** When to contact the registry. */
export type PullPolicy = "always" | "if-missing" | "never";

/** Progress of a pull, in order. */
export type PullEvent =
  | { readonly phase: "resolving"; readonly reference: string }
  | {
    readonly phase: "resolved";
    readonly reference: string;
    readonly manifestDigest: string;
    readonly layers: number;
    readonly totalBytes: number;
  }
  | {
    readonly phase: "layer";
    readonly digest: string;
    readonly downloadedBytes: number;
    readonly totalBytes: number;
    readonly cached: boolean;
  }
  | { readonly phase: "unpacking"; readonly digest: string; readonly index: number; readonly count: number }
  | { readonly phase: "building"; readonly manifestDigest: string }
  | {
    readonly phase: "done";
    readonly reference: string;
    readonly manifestDigest: string;
    readonly cached: boolean;
  };

/** Options of {@link pullImage}. */
export interface PullOptions {
  readonly policy?: PullPolicy;
  readonly auth?: BasicAuth;
  /** Plain HTTP (default: only for localhost and 127.0.0.0/8). */
  readonly insecure?: boolean;
  readonly onProgress?: (event: PullEvent) => void;
  readonly signal?: AbortSignal;
}

/** A pulled image. */
export interface PulledImage {
  readonly reference: string;
  readonly manifestDigest: string;
  /** The shared read-only root. */
  readonly lower: string;
  readonly config: ImageConfig;
}

/** Layer downloads running at once. */
const CONCURRENT_DOWNLOADS = 3;
/** Bytes a download may run ahead of its blob file and of its decompressor. */
const QUEUE_BYTES = 16 << 20;
/** How often (bytes) a layer reports progress. */
const PROGRESS_STEP = 1 << 20;

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function loadPulled(reference: string, manifestDigest: string): Promise<PulledImage | undefined> {
  const dir = imagePaths().image(manifestDigest);
  if (!(await exists(join(dir, ".complete")))) return undefined;
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json"))) as ImageConfig;
  return { reference, manifestDigest, lower: imagePaths().lower(manifestDigest), config };
}

/**
 * Streams one blob into `into`: from the store when it is there, otherwise
 * from the registry, verifying its digest and size and saving it to the
 * store as it streams; resumes a `.partial` download with a Range request
 * (or restarts when the registry ignores it). Stops when `stop` aborts.
 * Throws only for the download itself (network, digest, abort).
 */
async function streamBlob(
  client: RegistryClient,
  layer: Descriptor,
  into: WritableStream<Uint8Array>,
  stop: AbortSignal,
  report: (downloaded: number, cached: boolean) => void,
): Promise<void> {
  const paths = imagePaths();
  const final = paths.blob(layer.digest);
  const out = feeder(into.getWriter());
  let file: Deno.FsFile | undefined;
  try {
    if (await exists(final)) {
      report(layer.size, true);
      for await (const chunk of (await Deno.open(final, { read: true })).readable) {
        stop.throwIfAborted();
        if (out.dead) break;
        await out.write(chunk);
      }
      await out.close();
      return;
    }
    await Deno.mkdir(paths.blobs, { recursive: true });
    const partial = `${final}.partial`;
    const have = await Deno.stat(partial).then((s) => s.size, () => 0);
    const { body, offset } = await client.blob(layer.digest, { offset: have });
    // The hash covers the whole blob: what is already on disk goes through it
    // (and on to the decompressor) first, and is not written again.
    const hasher = digestStream({ expected: layer.digest, expectedSize: layer.size, what: `layer ${layer.digest}` });
    file = await Deno.open(partial, { write: true, create: true, truncate: offset === 0, append: offset > 0 });
    const prefix = offset > 0
      ? (await Deno.open(partial, { read: true })).readable
      : ReadableStream.from<Uint8Array>([]);
    let skip = offset;
    let downloaded = offset;
    let reported = 0;
    for await (const chunk of ReadableStream.from(chain(prefix, body)).pipeThrough(hasher)) {
      stop.throwIfAborted();
      await out.write(chunk);
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
    file.close();
    file = undefined;
    await Deno.rename(partial, final);
    await out.close();
    report(layer.size, false);
  } catch (e) {
    file?.close();
    await out.abort(e);
    // A corrupt download must not be resumed: start over next time.
    if (e instanceof ImageError && e.code === "IMAGE_DIGEST_MISMATCH") {
      await Deno.remove(`${final}.partial`).catch(() => {});
    }
    throw e instanceof KrunboxError || stop.aborted
      ? e
      : new ImageError("IMAGE_PULL", `downloading ${layer.digest} failed: ${e}`, { cause: e });
  }
}

/**
 * Feeds the decompressor without waiting for each chunk to be processed
 * (up to the stream's high-water mark), so the download, the blob file and
 * inflate run side by side. Once the decompressor or the tar reader has
 * failed, chunks are dropped: the download goes on to its digest check,
 * so a corrupt download is reported as such rather than as a broken tar.
 */
function feeder(writer: WritableStreamDefaultWriter<Uint8Array>) {
  let dead = false;
  return {
    get dead(): boolean {
      return dead;
    },
    async write(chunk: Uint8Array): Promise<void> {
      if (dead) return;
      try {
        await writer.ready;
      } catch {
        dead = true;
        return;
      }
      writer.write(chunk).catch(() => dead = true);
    },
    async close(): Promise<void> {
      if (!dead) await writer.close().catch(() => {});
    },
    async abort(reason: unknown): Promise<void> {
      await writer.abort(reason).catch(() => {});
    },
  };
}

async function* chain(...streams: ReadableStream<Uint8Array>[]): AsyncGenerator<Uint8Array> {
  for (const s of streams) yield* s;
}

/** Layer media types krunbox applies. zstd layers are refused with a clear error. */
const GZIP_LAYERS: readonly string[] = [
  "application/vnd.oci.image.layer.v1.tar+gzip",
  "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
const PLAIN_LAYERS: readonly string[] = ["application/vnd.oci.image.layer.v1.tar"];

function checkLayerType(layer: Descriptor): void {
  if (!GZIP_LAYERS.includes(layer.mediaType) && !PLAIN_LAYERS.includes(layer.mediaType)) {
    throw new ImageError("IMAGE_INVALID", `layer ${layer.digest} has unsupported media type ${layer.mediaType}`);
  }
}

/**
 * Streams one layer into the image: blob → (gzip) → tar → records, with
 * large files written to the lower's data area. A failed download or
 * digest check wins over the tar error it causes downstream.
 */
async function pullLayer(
  client: RegistryClient,
  layer: Descriptor,
  lower: LowerBuilder,
  cancel: AbortSignal,
  report: (downloaded: number, cached: boolean) => void,
): Promise<LayerEntry[]> {
  const what = `layer ${layer.digest}`;
  const plain = !GZIP_LAYERS.includes(layer.mediaType);
  const codec = plain
    ? new TransformStream<Uint8Array, Uint8Array>(
      undefined,
      new ByteLengthQueuingStrategy({ highWaterMark: QUEUE_BYTES }),
    )
    : gunzip(what);
  const download = streamBlob(client, layer, codec.writable, cancel, report);
  const entries = lower.read(codec.readable);
  const [d, t] = await Promise.allSettled([download, entries]);
  if (d.status === "rejected") throw d.reason; // the cause of whatever the tar reader saw
  if (t.status === "rejected") throw t.reason;
  return (t as PromiseFulfilledResult<LayerEntry[]>).value;
}

/** Runs `work` over items with at most `limit` at once; results in order. */
function limited<T, R>(items: readonly T[], limit: number, work: (item: T) => Promise<R>): Promise<R>[] {
  let running = 0;
  const queue: (() => void)[] = [];
  return items.map(async (item) => {
    if (running >= limit) await new Promise<void>((r) => queue.push(r));
    running++;
    try {
      return await work(item);
    } finally {
      running--;
      queue.shift()?.();
    }
  });
}

/**
 * Removes what killed builds of this image left (`<dir>.building-<pid>`).
 * Only called under the image's lock, so no live build is among them.
 */
async function removeStaleBuilds(dir: string): Promise<void> {
  const parent = dirname(dir);
  const prefix = `${basename(dir)}.building-`;
  for await (const e of Deno.readDir(parent)) {
    if (e.name.startsWith(prefix)) await Deno.remove(join(parent, e.name), { recursive: true }).catch(() => {});
  }
}

async function build(client: RegistryClient, resolved: ResolvedImage, options: PullOptions): Promise<void> {
  const paths = imagePaths();
  const dir = paths.image(resolved.manifestDigest);
  const staging = `${dir}.building-${Deno.pid}`;
  const layers = resolved.manifest.layers;
  await removeStaleBuilds(dir);
  await Deno.mkdir(staging, { recursive: true });
  const emit = options.onProgress ?? (() => {});
  const failed = new AbortController(); // stops the other layers when one fails
  const cancel = options.signal ? AbortSignal.any([options.signal, failed.signal]) : failed.signal;
  let read: Promise<LayerEntry[]>[] = [];
  try {
    layers.forEach(checkLayerType); // refuse unsupported layers before downloading
    using lower = await LowerBuilder.create(join(staging, "lower.erofs"));
    // A blob listed twice (empty layers often are) is read once; its records are applied at each place.
    const unique = [...new Map(layers.map((l) => [l.digest, l])).values()];
    read = limited(unique, CONCURRENT_DOWNLOADS, (layer) => {
      cancel.throwIfAborted();
      emit({ phase: "unpacking", digest: layer.digest, index: layers.indexOf(layer), count: layers.length });
      return pullLayer(
        client,
        layer,
        lower,
        cancel,
        (downloadedBytes, cached) =>
          emit({ phase: "layer", digest: layer.digest, downloadedBytes, totalBytes: layer.size, cached }),
      );
    });
    read.forEach((r) => r.catch(() => {})); // each is awaited in order below
    const byDigest = new Map(unique.map((l, i) => [l.digest, read[i]]));
    for (let i = 0; i < layers.length; i++) lower.apply(i, await byDigest.get(layers[i].digest)!);
    emit({ phase: "building", manifestDigest: resolved.manifestDigest });
    await lower.finish();
    await Deno.writeTextFile(join(staging, "manifest.json"), JSON.stringify(resolved.manifest));
    await Deno.writeTextFile(join(staging, "config.json"), JSON.stringify(resolved.config));
    await Deno.writeTextFile(join(staging, ".complete"), "");
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.rename(staging, dir);
  } catch (e) {
    failed.abort(e);
    await Promise.allSettled(read);
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    throw e;
  }
}

/**
 * Makes an image available in the store and returns it.
 *
 * @example
 * ```ts
 * import { pullImage } from "./pull.ts";
 * import { Store } from "../store/db.ts";
 * using store = Store.open("/tmp/kb/db.sqlite");
 * const img = await pullImage(store, "127.0.0.1:5000/busybox:1", {
 *   onProgress: (e) => console.log(e.phase),
 * });
 * console.log(img.lower);
 * ```
 */
export async function pullImage(store: Store, reference: string, options: PullOptions = {}): Promise<PulledImage> {
  const ref = parseReference(reference);
  const canonical = ref.toString();
  const policy = options.policy ?? "if-missing";
  const emit = options.onProgress ?? (() => {});
  if (policy !== "always") {
    const row = store.getImage(canonical);
    const have = row && await loadPulled(canonical, row.manifestDigest);
    if (have) {
      emit({ phase: "done", reference: canonical, manifestDigest: have.manifestDigest, cached: true });
      return have;
    }
    if (policy === "never") {
      throw new ImageError("IMAGE_NOT_FOUND", `${canonical} is not in the image store and the pull policy is "never"`);
    }
  }
  emit({ phase: "resolving", reference: canonical });
  const client = new RegistryClient(ref, { auth: options.auth, insecure: options.insecure, signal: options.signal });
  const resolved = await client.resolve();
  emit({
    phase: "resolved",
    reference: canonical,
    manifestDigest: resolved.manifestDigest,
    layers: resolved.manifest.layers.length,
    totalBytes: resolved.manifest.layers.reduce((n, l) => n + l.size, 0),
  });
  const paths = imagePaths();
  await Deno.mkdir(paths.images, { recursive: true });
  const lock = await lockWait(`${paths.image(resolved.manifestDigest)}.lock`, 30 * 60_000);
  if (!lock) {
    throw new ImageError("IMAGE_PULL", `another process has been building ${resolved.manifestDigest} for 30 min`);
  }
  try {
    let pulled = await loadPulled(canonical, resolved.manifestDigest);
    const cached = pulled !== undefined;
    if (!pulled) {
      await build(client, resolved, options);
      pulled = (await loadPulled(canonical, resolved.manifestDigest))!;
    }
    store.putImage(canonical, resolved.manifestDigest, (await Deno.stat(pulled.lower)).size);
    emit({ phase: "done", reference: canonical, manifestDigest: resolved.manifestDigest, cached });
    return pulled;
  } finally {
    lock.release();
  }
}
