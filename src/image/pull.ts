/**
 * Pulling an image into the store: resolve the reference, then stream every
 * layer (at most three at once) from the registry through its digest check
 * into the blob store and, in the same pass, through gzip and the tar
 * reader into the image's EROFS lower: large files land in its data area
 * as they arrive, the rest is held as records. The layers are applied in
 * order to an in-memory tree, whose metadata completes the lower. Nothing
 * is unpacked onto the host. A `.partial` download is resumed after an
 * interruption; a cached blob is read from the store. Progress is reported
 * as events. The layers of one image are read under one set of caps
 * (`limits.ts`: bytes, entries, names, xattrs, pax headers), so a hostile
 * layer fails with `IMAGE_INVALID` while it streams, digest or not.
 *
 * One image directory per manifest digest, built under a lock and renamed
 * into place when complete, so concurrent pulls of one image build it once
 * and a failed pull leaves nothing that looks complete.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { ImageError } from "../errors.ts";
import type { Store } from "../store/db.ts";
import { lockWait } from "../store/lock.ts";
import { parseReference } from "./reference.ts";
import type { BasicAuth } from "./auth.ts";
import type { Descriptor, ImageConfig } from "./oci.ts";
import { RegistryClient, type ResolvedImage } from "./registry.ts";
import { type BlobProgress, StoredBlobDamagedError, streamBlob } from "./blobs.ts";
import { IN_QUEUE } from "./decoder.ts";
import { gunzip } from "./gunzip.ts";
import { unzstd } from "./unzstd.ts";
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
  /** When to contact the registry (default `if-missing`). */
  readonly policy?: PullPolicy;
  /** Credentials for the registry (used for this pull only, never stored). */
  readonly auth?: BasicAuth;
  /** Plain HTTP (default: only for localhost and 127.0.0.0/8). */
  readonly insecure?: boolean;
  /** Called with each progress event, in order. */
  readonly onProgress?: (event: PullEvent) => void;
  /** Aborts the pull. */
  readonly signal?: AbortSignal;
}

/** A pulled image. */
export interface PulledImage {
  /** The canonical reference, e.g. `docker.io/library/alpine:3.20`. */
  readonly reference: string;
  /** Digest of the platform manifest (`sha256:…`), which identifies the image in the store. */
  readonly manifestDigest: string;
  /** The shared read-only root. */
  readonly lower: string;
  /** The image config (its runtime defaults are under `config`). */
  readonly config: ImageConfig;
}

/** Layer downloads running at once. */
const CONCURRENT_DOWNLOADS = 3;

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function loadPulled(reference: string, manifestDigest: string): Promise<PulledImage | undefined> {
  const dir = imagePaths().image(manifestDigest);
  if (!(await exists(join(dir, ".complete")))) return undefined;
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json"))) as ImageConfig;
  return { reference, manifestDigest, lower: imagePaths().lower(manifestDigest), config };
}

/** Layer media types krunbox applies, and how each is decompressed. */
const LAYER_CODECS: Readonly<Record<string, (what: string) => TransformStream<Uint8Array, Uint8Array>>> = {
  "application/vnd.oci.image.layer.v1.tar+gzip": gunzip,
  "application/vnd.docker.image.rootfs.diff.tar.gzip": gunzip,
  "application/vnd.oci.image.layer.v1.tar+zstd": unzstd,
  "application/vnd.oci.image.layer.v1.tar": () =>
    new TransformStream<Uint8Array, Uint8Array>(
      undefined,
      new ByteLengthQueuingStrategy({ highWaterMark: IN_QUEUE }),
    ),
};

function checkLayerType(layer: Descriptor): void {
  if (!Object.hasOwn(LAYER_CODECS, layer.mediaType)) {
    throw new ImageError(
      "IMAGE_INVALID",
      `layer ${layer.digest} has unsupported media type ${layer.mediaType} (krunbox reads tar, tar+gzip and tar+zstd)`,
    );
  }
}

/**
 * Streams one layer into the image: blob → (gzip) → tar → records, with
 * large files written to the lower's data area. A failed download or
 * digest check wins over the tar error it causes downstream. A damaged
 * stored blob is fetched again from the registry, once.
 */
async function pullLayer(
  client: RegistryClient,
  layer: Descriptor,
  lower: LowerBuilder,
  cancel: AbortSignal,
  report: BlobProgress,
): Promise<LayerEntry[]> {
  for (let attempt = 0;; attempt++) {
    const codec = LAYER_CODECS[layer.mediaType](`layer ${layer.digest}`);
    const entries = lower.read(codec.readable);
    const consumerFailed = entries.then(() => new Promise<never>(() => {}), (e: unknown) => e);
    const download = streamBlob(client, layer, codec.writable, cancel, consumerFailed, report);
    const [d, t] = await Promise.allSettled([download, entries]);
    if (d.status === "rejected") {
      if (attempt === 0 && d.reason instanceof StoredBlobDamagedError) continue;
      throw d.reason; // the cause of whatever the tar reader saw
    }
    if (t.status === "rejected") throw t.reason;
    return t.value;
  }
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
  layers.forEach(checkLayerType); // refuse unsupported layers before downloading
  await removeStaleBuilds(dir);
  await Deno.mkdir(staging, { recursive: true });
  const emit = options.onProgress ?? (() => {});
  // The first layer to fail stops the others at once, and its error is the one reported.
  const failed = new AbortController();
  let firstFailure: { error: unknown } | undefined;
  const cancel = options.signal ? AbortSignal.any([options.signal, failed.signal]) : failed.signal;
  let read: Promise<LayerEntry[]>[] = [];
  const lower = await LowerBuilder.create(join(staging, "lower.erofs"));
  try {
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
    for (const r of read) {
      r.catch((error) => {
        if (firstFailure || cancel.aborted) return;
        firstFailure = { error };
        failed.abort(error);
      });
    }
    const byDigest = new Map(unique.map((l, i) => [l.digest, read[i]]));
    for (let i = 0; i < layers.length; i++) lower.apply(i, await byDigest.get(layers[i].digest)!);
    emit({ phase: "building", manifestDigest: resolved.manifestDigest });
    await lower.finish();
    lower[Symbol.dispose]();
    await Deno.writeTextFile(join(staging, "manifest.json"), JSON.stringify(resolved.manifest));
    await Deno.writeTextFile(join(staging, "config.json"), JSON.stringify(resolved.config));
    await Deno.writeTextFile(join(staging, ".complete"), "");
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.rename(staging, dir);
  } catch (e) {
    if (!firstFailure) firstFailure = { error: e };
    failed.abort(e);
    await Promise.allSettled(read);
    lower[Symbol.dispose]();
    await Deno.remove(staging, { recursive: true }).catch(() => {});
    throw firstFailure.error;
  }
}

/**
 * Makes an image available in the store and returns it.
 *
 * @example
 * ```ts ignore
 * // Needs a registry; tests/e2e/pull_test.ts ("pull: layers (gzip, plain, a repeated blob) merge …") runs the same.
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
  for (const digest of [resolved.manifestDigest, ...resolved.manifest.layers.map((l) => l.digest)]) {
    if (!/^sha256:[0-9a-f]{64}$/.test(digest)) {
      throw new ImageError(
        "IMAGE_INVALID",
        `${canonical}: ${digest} is not a sha256 digest (the store keeps sha256 only)`,
      );
    }
  }
  emit({
    phase: "resolved",
    reference: canonical,
    manifestDigest: resolved.manifestDigest,
    layers: resolved.manifest.layers.length,
    totalBytes: resolved.manifest.layers.reduce((n, l) => n + l.size, 0),
  });
  const paths = imagePaths();
  await Deno.mkdir(paths.images, { recursive: true });
  const lock = await lockWait(`${paths.image(resolved.manifestDigest)}.lock`, 30 * 60_000, options.signal);
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
