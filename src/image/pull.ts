/**
 * Pulling an image into the store: resolve the reference, download every
 * layer blob concurrently (verified by digest while streaming, resumed from
 * a `.partial` file after an interruption), apply the layers in order onto
 * one flattened directory as each becomes available, and turn it into the
 * image's read-only EROFS lower. Progress is reported as events.
 *
 * One image directory per manifest digest, built under a lock and renamed
 * into place when complete, so concurrent pulls of one image build it once
 * and a failed pull leaves nothing that looks complete.
 *
 * @module
 */

import { dirname, join } from "node:path";
import { ImageError, KrunboxError } from "../errors.ts";
import type { Store } from "../store/db.ts";
import { lockWait } from "../store/lock.ts";
import { runCommand } from "../util/command.ts";
import { parseReference } from "./reference.ts";
import {
  type BasicAuth,
  type Descriptor,
  digestStream,
  type ImageConfig,
  RegistryClient,
  type ResolvedImage,
} from "./registry.ts";
import { imagePaths } from "./store.ts";
import { readTar } from "./tar.ts";
import { unpackLayer } from "./unpack.ts";

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
 * Downloads one blob into the store unless it is there, verifying its
 * digest and size as it streams; resumes a `.partial` download with a Range
 * request (or restarts when the registry ignores it).
 */
async function fetchBlob(
  client: RegistryClient,
  layer: Descriptor,
  report: (downloaded: number, cached: boolean) => void,
): Promise<string> {
  const paths = imagePaths();
  const final = paths.blob(layer.digest);
  if (await exists(final)) {
    report(layer.size, true);
    return final;
  }
  await Deno.mkdir(paths.blobs, { recursive: true });
  const partial = `${final}.partial`;
  const have = await Deno.stat(partial).then((s) => s.size, () => 0);
  const { body, offset } = await client.blob(layer.digest, { offset: have });
  // The hash covers the whole blob: feed it what is already on disk first.
  const hasher = digestStream({ expected: layer.digest, expectedSize: layer.size, what: `layer ${layer.digest}` });
  const file = await Deno.open(partial, { write: true, create: true, truncate: offset === 0, append: offset > 0 });
  let downloaded = offset;
  let reported = 0;
  // Resuming: the bytes already on disk go through the hasher first (and are not written again).
  const prefix = offset > 0 ? (await Deno.open(partial, { read: true })).readable : ReadableStream.from<Uint8Array>([]);
  try {
    let skip = offset; // bytes of the prefix that are already in the file
    await ReadableStream.from(chain(prefix, body)).pipeThrough(hasher).pipeTo(
      new WritableStream({
        async write(chunk) {
          let c = chunk;
          if (skip > 0) {
            const drop = Math.min(skip, c.length);
            skip -= drop;
            c = c.subarray(drop);
            if (c.length === 0) return;
          }
          for (let off = 0; off < c.length;) off += await file.write(c.subarray(off));
          downloaded += c.length;
          if (downloaded - reported >= PROGRESS_STEP) {
            reported = downloaded;
            report(downloaded, false);
          }
        },
      }),
    );
  } catch (e) {
    file.close();
    // A corrupt download must not be resumed: start over next time.
    if (e instanceof ImageError && e.code === "IMAGE_DIGEST_MISMATCH") await Deno.remove(partial).catch(() => {});
    throw e instanceof KrunboxError
      ? e
      : new ImageError("IMAGE_PULL", `downloading ${layer.digest} failed: ${e}`, { cause: e });
  }
  file.close();
  await Deno.rename(partial, final);
  report(layer.size, false);
  return final;
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

/** The layer's tar stream from its (possibly compressed) blob. */
function tarStream(layer: Descriptor, blob: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  checkLayerType(layer);
  if (!GZIP_LAYERS.includes(layer.mediaType)) return blob;
  return blob.pipeThrough(new DecompressionStream("gzip") as unknown as TransformStream<Uint8Array, Uint8Array>);
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

async function build(client: RegistryClient, resolved: ResolvedImage, options: PullOptions): Promise<number> {
  const paths = imagePaths();
  const dir = paths.image(resolved.manifestDigest);
  const staging = `${dir}.building-${Deno.pid}`;
  const layers = resolved.manifest.layers;
  await Deno.remove(staging, { recursive: true }).catch(() => {});
  await Deno.mkdir(staging, { recursive: true });
  // The flattened tree only lives until mkfs.erofs has read it: build it in
  // memory when it fits easily (file creation on tmpfs is ~3x cheaper here).
  const scratch = await scratchDir(layers.reduce((n, l) => n + l.size, 0));
  const rootfs = scratch ?? join(staging, "rootfs");
  await Deno.mkdir(rootfs, { recursive: true, mode: 0o755 });
  const emit = options.onProgress ?? (() => {});
  try {
    layers.forEach(checkLayerType); // refuse unsupported layers before downloading
    const downloads = limited(
      layers,
      CONCURRENT_DOWNLOADS,
      (layer) =>
        fetchBlob(
          client,
          layer,
          (downloadedBytes, cached) =>
            emit({ phase: "layer", digest: layer.digest, downloadedBytes, totalBytes: layer.size, cached }),
        ),
    );
    downloads.forEach((d) => d.catch(() => {})); // each is awaited in order below
    for (let i = 0; i < layers.length; i++) {
      const blob = await downloads[i];
      emit({ phase: "unpacking", digest: layers[i].digest, index: i, count: layers.length });
      const file = await Deno.open(blob, { read: true });
      await unpackLayer(readTar(tarStream(layers[i], file.readable)), rootfs);
    }
    emit({ phase: "building", manifestDigest: resolved.manifestDigest });
    await runCommand("mkfs.erofs", ["--quiet", join(staging, "lower.erofs"), rootfs]);
    await Deno.remove(rootfs, { recursive: true });
    if (scratch) await Deno.remove(dirname(scratch), { recursive: true }).catch(() => {});
    await Deno.writeTextFile(join(staging, "manifest.json"), JSON.stringify(resolved.manifest));
    await Deno.writeTextFile(join(staging, "config.json"), JSON.stringify(resolved.config));
    await Deno.writeTextFile(join(staging, ".complete"), "");
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.rename(staging, dir);
    return (await Deno.stat(paths.lower(resolved.manifestDigest))).size;
  } catch (e) {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    if (scratch) await Deno.remove(dirname(scratch), { recursive: true }).catch(() => {});
    throw e;
  }
}

/**
 * A directory on /dev/shm for the flattened tree when the image (estimated
 * at 4x its compressed size) takes under a quarter of the available memory;
 * undefined otherwise (then it is built on disk beside the image). tmpfs on
 * older kernels keeps no `user.*` xattrs; the unpacker warns about those.
 */
async function scratchDir(compressedBytes: number): Promise<string | undefined> {
  if (Deno.env.get("KRUNBOX_UNPACK_ON_DISK")) return undefined;
  try {
    const meminfo = await Deno.readTextFile("/proc/meminfo");
    const available = Number(meminfo.match(/^MemAvailable:\s+(\d+) kB/m)?.[1] ?? 0) * 1024;
    if (compressedBytes * 4 > available / 4) return undefined;
    const dir = await Deno.makeTempDir({ dir: "/dev/shm", prefix: "krunbox-unpack-" });
    return join(dir, "rootfs");
  } catch {
    return undefined;
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
