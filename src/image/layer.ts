/**
 * Reads one layer's tar stream into {@link LayerEntry} records: names
 * normalized (a `..` is refused before anything is stored), small files
 * kept in memory, larger ones written straight to the image's data area
 * as they stream in. Applying the records to a {@link LayerTree} is a
 * separate step, so layers can be read concurrently and applied in order.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { type DataArea, INLINE_MAX } from "./erofs.ts";
import { BLOCK_SIZE } from "./erofs_format.ts";
import { PullUsage } from "./limits.ts";
import type { TarEntry } from "./tar.ts";
import { type LayerEntry, type NodeData, normalizeEntryPath, PATH_MAX } from "./tree.ts";

/**
 * How many bytes of small files may be held in memory across the layers of
 * one pull; past it, small files go to the data area like large ones.
 *
 * @example
 * ```ts
 * import { MemoryBudget } from "./layer.ts";
 * const budget = new MemoryBudget(64 << 20);
 * console.log(budget.take(4000)); // true
 * ```
 */
export class MemoryBudget {
  #left: number;

  constructor(bytes: number) {
    this.#left = bytes;
  }

  /** Takes `bytes` from the budget; false (and nothing taken) when it would run out. */
  take(bytes: number): boolean {
    if (bytes > this.#left) return false;
    this.#left -= bytes;
    return true;
  }
}

/**
 * Reads every entry of a layer; file contents end up in memory or in
 * `area`. Throws `ImageError("IMAGE_INVALID")` on a name with `..` or a NUL
 * byte, a name or link target longer than {@link PATH_MAX}, an entry that
 * goes over one of `usage`'s caps (entries, names, xattrs, bytes: a file
 * is refused at its header when its declared size cannot fit), and
 * whatever the tar reader throws on a broken archive. Pass the tar
 * reader's usage so both count against one image.
 *
 * @example
 * ```ts
 * import { DataArea } from "./erofs.ts";
 * import { MemoryBudget, readLayer } from "./layer.ts";
 * import { readTar } from "./tar.ts";
 * // A one-file layer, made with the host's tar.
 * const dir = await Deno.makeTempDir();
 * await Deno.mkdir(`${dir}/etc`);
 * await Deno.writeTextFile(`${dir}/etc/os-release`, "ID=demo\n");
 * const args = ["-cf", "-", "-C", dir, "etc"];
 * const { stdout: tar } = await new Deno.Command("tar", { args, stdout: "piped" }).output();
 * using area = await DataArea.create(`${dir}/lower.erofs`);
 * const entries = await readLayer(readTar(ReadableStream.from([tar])), area, new MemoryBudget(1 << 30));
 * console.log(entries.map((e) => e.path)); // [ "etc", "etc/os-release" ]
 * if (entries.length !== 2) throw new Error(String(entries.length));
 * ```
 */
export async function readLayer(
  tar: AsyncIterable<TarEntry>,
  area: DataArea,
  budget: MemoryBudget,
  usage: PullUsage = new PullUsage(),
): Promise<LayerEntry[]> {
  using sink = await area.sink();
  const out: LayerEntry[] = [];
  for await (const e of tar) {
    const where = () =>
      `entry ${JSON.stringify(e.name.slice(0, 100))}${e.name.length > 100 ? "…" : ""} (offset ${e.offset})`;
    usage.chargeEntry(where);
    let path: string;
    try {
      path = normalizeEntryPath(e.name);
    } catch (x) {
      throw new ImageError("IMAGE_INVALID", `${(x as Error).message} at offset ${e.offset}`, { cause: x });
    }
    if (e.linkname.length > PATH_MAX) {
      throw new ImageError("IMAGE_INVALID", `invalid layer: ${where()}: its link target is longer than ${PATH_MAX}`);
    }
    // Both spellings of the name are kept (the raw one for messages), and the link target.
    usage.chargeNames(e.name.length + path.length + e.linkname.length, where);
    usage.chargeXattrs(e.xattrs, where);
    let data: NodeData | undefined;
    if (e.type === "file") {
      usage.expectBytes(e.size, where);
      if (e.size <= INLINE_MAX && budget.take(e.size)) {
        data = { kind: "memory", bytes: await e.bytes() };
      } else {
        const block = area.reserve(e.size);
        let at = block * BLOCK_SIZE;
        for (let c = await e.read(); c !== null; c = await e.read()) {
          sink.write(at, c);
          at += c.length;
        }
        data = { kind: "blocks", block, size: e.size };
      }
    }
    out.push({
      path,
      name: e.name,
      offset: e.offset,
      type: e.type,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      mtime: e.mtime,
      xattrs: e.xattrs,
      linkname: e.linkname,
      devmajor: e.devmajor,
      devminor: e.devminor,
      data,
    });
  }
  sink.flush();
  return out;
}
