/**
 * Building an image's read-only lower from its layers: each layer's tar
 * stream is read (concurrently with the others, large files straight into
 * the EROFS data area), the layers are applied in order to one in-memory
 * tree, and the tree's metadata completes the EROFS image.
 *
 * @module
 */

import { DataArea, type ErofsSummary, writeErofs } from "./erofs.ts";
import { MemoryBudget, readLayer } from "./layer.ts";
import { type PullCaps, pullCaps, PullUsage } from "./limits.ts";
import { readTar } from "./tar.ts";
import { type LayerEntry, LayerTree, type TreeStats } from "./tree.ts";

/**
 * Options of {@link LowerBuilder.create}.
 *
 * @example
 * ```ts
 * import type { LowerOptions } from "./lower.ts";
 * import { pullCaps } from "./limits.ts";
 * const options: LowerOptions = { caps: { ...pullCaps(), maxEntries: 10_000 }, warn: console.warn };
 * ```
 */
export interface LowerOptions {
  /** Called with each warning of the layer tree. */
  warn?: (message: string) => void;
  /** The caps of this build (default: the settings now, see {@link pullCaps}). */
  caps?: PullCaps;
}

/**
 * One lower being built into a file.
 *
 * @example
 * ```ts
 * import { LowerBuilder } from "./lower.ts";
 * // A one-file layer, made with the host's tar.
 * const dir = await Deno.makeTempDir();
 * await Deno.mkdir(`${dir}/etc`);
 * await Deno.writeTextFile(`${dir}/etc/os-release`, "ID=demo\n");
 * const args = ["-cf", "-", "-C", dir, "etc"];
 * const { stdout: tar } = await new Deno.Command("tar", { args, stdout: "piped" }).output();
 * using lower = await LowerBuilder.create(`${dir}/lower.erofs`);
 * // Two layers (here the same one twice): the second one's files win.
 * const layers = [tar, tar].map((t) => lower.read(ReadableStream.from([t])));
 * for (const [i, entries] of (await Promise.all(layers)).entries()) lower.apply(i, entries);
 * const summary = await lower.finish();
 * console.log(summary.inodes); // 3 (the root, etc, etc/os-release)
 * if (summary.inodes !== 3) throw new Error(JSON.stringify(summary));
 * ```
 */
export class LowerBuilder implements Disposable {
  readonly #area: DataArea;
  readonly #budget: MemoryBudget;
  readonly #usage: PullUsage;
  readonly #tree: LayerTree;
  #next = 0;

  private constructor(area: DataArea, options: LowerOptions) {
    this.#area = area;
    this.#usage = new PullUsage(options.caps ?? pullCaps());
    this.#budget = new MemoryBudget(this.#usage.caps.memoryBytes);
    this.#tree = new LayerTree(options.warn);
  }

  /** Starts a lower at `path` (created or truncated). */
  static async create(path: string, options: LowerOptions = {}): Promise<LowerBuilder> {
    return new LowerBuilder(await DataArea.create(path), options);
  }

  /** What applying the layers did so far. */
  get stats(): TreeStats {
    return this.#tree.stats;
  }

  /** What the layers read so far used of the build's caps. */
  get usage(): PullUsage {
    return this.#usage;
  }

  /**
   * Reads one layer's (uncompressed) tar stream; may run concurrently with
   * other layers, which share the build's caps. Throws
   * `ImageError("IMAGE_INVALID")` on a broken archive, a name with `..`, or
   * a layer that takes the image over a cap (the message names it and the
   * variable that raises it).
   */
  read(tar: ReadableStream<Uint8Array>): Promise<LayerEntry[]> {
    return readLayer(readTar(tar, this.#usage), this.#area, this.#budget, this.#usage);
  }

  /**
   * Applies layer `index`'s entries; layers must come in order, from 0.
   * Throws `ImageError("IMAGE_INVALID")` on a hostile entry.
   */
  apply(index: number, entries: readonly LayerEntry[]): void {
    if (index !== this.#next) throw new RangeError(`layer ${index} applied out of order (expected ${this.#next})`);
    this.#next++;
    for (const entry of entries) this.#tree.apply(index, entry);
  }

  /** Writes the metadata: the file is a complete EROFS image afterwards. */
  finish(): Promise<ErofsSummary> {
    return writeErofs(this.#area, this.#tree.root);
  }

  /** Closes the data area's open files. */
  [Symbol.dispose](): void {
    this.#area[Symbol.dispose]();
  }
}
