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
import { readTar } from "./tar.ts";
import { type LayerEntry, LayerTree, type TreeStats } from "./tree.ts";

/** Bytes of small files one build may hold in memory (past it they go to the data area too). */
const SMALL_FILE_MEMORY = 256 << 20;

/**
 * One lower being built into a file.
 *
 * @example
 * ```ts
 * import { LowerBuilder } from "./lower.ts";
 * using lower = await LowerBuilder.create("/tmp/lower.erofs");
 * const layers = ["base.tar", "app.tar"].map(async (p) => lower.read((await Deno.open(p)).readable));
 * for (const [i, entries] of (await Promise.all(layers)).entries()) lower.apply(i, entries);
 * console.log(await lower.finish());
 * ```
 */
export class LowerBuilder implements Disposable {
  readonly #area: DataArea;
  readonly #budget = new MemoryBudget(SMALL_FILE_MEMORY);
  readonly #tree: LayerTree;
  #next = 0;

  private constructor(area: DataArea, warn?: (message: string) => void) {
    this.#area = area;
    this.#tree = new LayerTree(warn);
  }

  /** Starts a lower at `path` (created or truncated). */
  static async create(path: string, options: { warn?: (message: string) => void } = {}): Promise<LowerBuilder> {
    return new LowerBuilder(await DataArea.create(path), options.warn);
  }

  /** What applying the layers did so far. */
  get stats(): TreeStats {
    return this.#tree.stats;
  }

  /**
   * Reads one layer's (uncompressed) tar stream; may run concurrently with
   * other layers. Throws `ImageError("IMAGE_INVALID")` on a broken archive
   * or a name with `..`.
   */
  read(tar: ReadableStream<Uint8Array>): Promise<LayerEntry[]> {
    return readLayer(readTar(tar), this.#area, this.#budget);
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
