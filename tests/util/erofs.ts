/**
 * Building EROFS lowers from tar layers in tests, and reading them back
 * with independent readers: erofs-utils' `fsck.erofs --extract` (checks
 * every inode and extracts the tree; as root it keeps owners, modes and
 * device nodes) and, as root, the host kernel itself (`mount -t erofs -o
 * loop`), which also exposes xattrs.
 *
 * @module
 */

import { LowerBuilder } from "../../src/image/lower.ts";
import type { ErofsSummary } from "../../src/image/erofs.ts";
import type { TreeStats } from "../../src/image/tree.ts";
import { which } from "../../src/util/command.ts";
import { chunkedStream } from "./tar_writer.ts";

/** A lower built by {@link buildLower}. */
export interface BuiltLower {
  /** The EROFS image file. */
  path: string;
  summary: ErofsSummary;
  stats: TreeStats;
}

/**
 * Builds an EROFS image at `path` from plain tar layers (bottom first),
 * each streamed in odd-sized chunks.
 *
 * @example
 * ```ts
 * import { buildLower } from "./erofs.ts";
 * import { writeTar } from "./tar_writer.ts";
 * const built = await buildLower("/tmp/l.erofs", [writeTar([{ name: "hello", data: "hi" }])]);
 * console.log(built.summary.inodes);
 * ```
 */
export async function buildLower(path: string, layers: readonly Uint8Array[]): Promise<BuiltLower> {
  using lower = await LowerBuilder.create(path);
  const read = await Promise.all(layers.map((tar) => lower.read(chunkedStream(tar, [7, 512, 1000, 3, 70000]))));
  read.forEach((entries, i) => lower.apply(i, entries));
  const summary = await lower.finish();
  return { path, summary, stats: lower.stats };
}

/** Why fsck.erofs cannot be used here, or undefined. */
export async function missingFsckErofs(): Promise<string | undefined> {
  return (await which("fsck.erofs", ["/usr/sbin", "/sbin"]))
    ? undefined
    : "fsck.erofs is not installed (apt-get install erofs-utils)";
}

/**
 * Checks an image with `fsck.erofs` and extracts it into `dir` (which must
 * not exist); throws with fsck's output when the image is inconsistent.
 *
 * @example
 * ```ts
 * import { extractLower } from "./erofs.ts";
 * await extractLower("/tmp/l.erofs", "/tmp/l-tree");
 * ```
 */
export async function extractLower(image: string, dir: string): Promise<void> {
  const fsck = (await which("fsck.erofs", ["/usr/sbin", "/sbin"]))!;
  const out = await new Deno.Command(fsck, { args: [`--extract=${dir}`, image], stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`fsck.erofs ${image} failed (${out.code}):\n${text}`);
}

/**
 * Mounts an image read-only with the host kernel, runs `fn` on the mount
 * point, and unmounts; returns why it cannot (not root, no erofs in the
 * kernel, no loop devices) instead of running `fn`.
 *
 * @example
 * ```ts
 * import { withMountedLower } from "./erofs.ts";
 * const skipped = await withMountedLower("/tmp/l.erofs", async (dir) => console.log(await Deno.readTextFile(`${dir}/hello`)));
 * if (skipped) console.log("skipped:", skipped);
 * ```
 */
export async function withMountedLower(
  image: string,
  fn: (dir: string) => Promise<void>,
): Promise<string | undefined> {
  if (Deno.uid() !== 0) return "mounting needs root";
  const dir = await Deno.makeTempDir({ prefix: "krunbox-erofs-mnt-" });
  try {
    const mount = await new Deno.Command("mount", {
      args: ["-t", "erofs", "-o", "loop,ro", image, dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!mount.success) return `the host cannot mount erofs: ${new TextDecoder().decode(mount.stderr).trim()}`;
    try {
      await fn(dir);
    } finally {
      // A readdir the kernel failed can leave a descriptor open (Deno keeps it): then detach lazily.
      const umount = await new Deno.Command("umount", { args: [dir], stdout: "null", stderr: "null" }).output();
      if (!umount.success) {
        await new Deno.Command("umount", { args: ["-l", dir], stdout: "null", stderr: "null" }).output();
      }
    }
    return undefined;
  } finally {
    await Deno.remove(dir).catch(() => {});
  }
}
