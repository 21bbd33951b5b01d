/**
 * `Images`: the image cache as callers see it — pull with progress, list,
 * remove a reference, prune what nothing uses.
 *
 * @module
 */

import { join } from "node:path";
import { ImageError } from "../errors.ts";
import { openStore } from "../store/open.ts";
import { type PulledImage, pullImage, type PullOptions } from "./pull.ts";
import { parseReference } from "./reference.ts";
import { imagePaths } from "./store.ts";
import type { ImageRow } from "../store/db.ts";
import { isLocked } from "../store/lock.ts";

/** An image reference in the store. */
export type StoredImage = ImageRow;

/** What `prune()` freed. */
export interface PruneResult {
  /** Manifest digests whose images were deleted. */
  readonly images: string[];
  /** Layer blobs deleted. */
  readonly blobs: number;
  /** Bytes on disk freed by deleting those images and blobs. */
  readonly bytesFreed: number;
}

async function* entries(dir: string): AsyncGenerator<Deno.DirEntry> {
  try {
    yield* Deno.readDir(dir);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

async function sizeOf(path: string): Promise<number> {
  const st = await Deno.lstat(path).catch(() => undefined);
  if (!st) return 0;
  if (!st.isDirectory) return st.size;
  let n = 0;
  for await (const e of Deno.readDir(path)) n += await sizeOf(join(path, e.name));
  return n;
}

/**
 * The image cache.
 *
 * @example
 * ```ts ignore
 * // Needs a registry; tests/e2e/api_pull_test.ts runs the same pull, list and prune.
 * import { Images } from "@krunbox/krunbox";
 * await Images.pull("127.0.0.1:5000/busybox:1", { onProgress: (e) => console.log(e.phase) });
 * for (const img of await Images.list()) console.log(img.reference, img.size);
 * await Images.prune();
 * ```
 */
export class Images {
  /** Pulls an image into the store (default policy `always`: asks the registry). */
  static async pull(reference: string, options: PullOptions = {}): Promise<PulledImage> {
    using store = await openStore();
    return await pullImage(store, reference, { policy: "always", ...options });
  }

  /** Every image reference in the store. */
  static async list(): Promise<StoredImage[]> {
    using store = await openStore();
    return store.listImages();
  }

  /** Forgets a reference; its data goes at the next `prune()` if nothing else uses it. */
  static async remove(reference: string): Promise<void> {
    const canonical = parseReference(reference).toString();
    using store = await openStore();
    if (!store.getImage(canonical)) throw new ImageError("IMAGE_NOT_FOUND", `${canonical} is not in the image store`);
    store.deleteImage(canonical);
  }

  /**
   * Deletes images no reference and no sandbox uses, and layer blobs no
   * remaining image needs.
   */
  static async prune(): Promise<PruneResult> {
    using store = await openStore();
    const paths = imagePaths();
    const keep = new Set([...store.listImages().map((i) => i.manifestDigest), ...store.imagesInUse()]);
    const keepBlobs = new Set<string>();
    const images: string[] = [];
    let bytesFreed = 0;
    for await (const e of entries(paths.images)) {
      if (!e.isDirectory || !/^[0-9a-f]{64}$/.test(e.name)) continue;
      const digest = `sha256:${e.name}`;
      const dir = paths.image(digest);
      // Locked: being pulled, and perhaps not registered yet.
      if (keep.has(digest) || isLocked(`${dir}.lock`)) {
        const manifest = await Deno.readTextFile(join(dir, "manifest.json")).then(JSON.parse, () => undefined);
        for (const l of manifest?.layers ?? []) keepBlobs.add(l.digest);
        continue;
      }
      bytesFreed += await sizeOf(dir);
      await Deno.remove(dir, { recursive: true });
      images.push(digest);
    }
    let blobs = 0;
    for await (const e of entries(paths.blobs)) {
      if (e.name.endsWith(".lock")) continue;
      const hex = e.name.replace(/\.partial$/, "");
      if (keepBlobs.has(`sha256:${hex}`)) continue;
      if (isLocked(join(paths.blobs, `${hex}.lock`))) continue; // being downloaded right now
      bytesFreed += await sizeOf(join(paths.blobs, e.name));
      await Deno.remove(join(paths.blobs, e.name));
      blobs++;
    }
    return { images, blobs, bytesFreed };
  }
}
