/**
 * The image store under `$KRUNBOX_HOME/cache`:
 *
 * ```
 * blobs/sha256/<hex>            compressed layers, verified, kept for re-use
 * blobs/sha256/<hex>.partial    a download in progress (resumed with Range)
 * images/<manifest hex>/        one per manifest digest, shared by every sandbox of it:
 *   manifest.json config.json   as pulled
 *   lower.erofs                 the flattened root, read-only lower of every sandbox
 *   .complete                   written last: an image without it is not there
 * ```
 *
 * References (`python:3.12` → manifest digest) live in the `images` table
 * of the SQLite store, so concurrent callers agree on what is pulled.
 *
 * @module
 */

import { join } from "node:path";
import { homeLayout } from "../store/home.ts";

/**
 * Paths of the image store.
 *
 * @example
 * ```ts
 * import { imagePaths } from "./store.ts";
 * console.log(imagePaths().blob("sha256:" + "0".repeat(64))); // $KRUNBOX_HOME/cache/blobs/sha256/000…000
 * ```
 */
export function imagePaths(root = homeLayout().cache) {
  const hex = (digest: string) => {
    const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
    if (!m) throw new RangeError(`not a sha256 digest: ${digest}`);
    return m[1];
  };
  return {
    root,
    blobs: join(root, "blobs", "sha256"),
    images: join(root, "images"),
    /** The verified compressed blob. */
    blob: (digest: string) => join(root, "blobs", "sha256", hex(digest)),
    /** The directory of one manifest's image. */
    image: (manifestDigest: string) => join(root, "images", hex(manifestDigest)),
    /** The shared read-only lower of one image. */
    lower: (manifestDigest: string) => join(root, "images", hex(manifestDigest), "lower.erofs"),
  };
}
