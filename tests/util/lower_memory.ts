/**
 * Measures the memory an image build holds while it reads a hostile layer:
 * a child `deno` (with `--expose-gc`, its own clean heap) builds a lower
 * from a generated tar stream (nothing of the layer is held by the test
 * itself) and samples the live heap (`heapUsed + external` after a full
 * GC) and RSS as entries stream in. The caps come from the environment
 * the child is given, as they would for a pull.
 *
 * @module
 */

import { type TarSpec, tarStream } from "./tar_writer.ts";
import { LowerBuilder } from "../../src/image/lower.ts";
import { ImageError } from "../../src/errors.ts";

/** The hostile layers the child can build. */
export type FloodKind = "xattrs" | "names" | "links" | "entries";

/**
 * What a measured build did.
 *
 * @example
 * ```ts
 * import type { FloodResult } from "./lower_memory.ts";
 * const mib = (r: FloodResult) => (r.peakLive - r.baseLive) / 2 ** 20;
 * ```
 */
export interface FloodResult {
  /** The `ImageError` code and message, or undefined when the build completed. */
  code?: string;
  message?: string;
  /** Entries the generator produced (some may not have been read). */
  produced: number;
  /** `heapUsed + external` after a GC before the build. */
  baseLive: number;
  /** Largest `heapUsed + external` after a GC while entries streamed in. */
  peakLive: number;
  /** RSS before the build. */
  baseRss: number;
  /** Largest RSS seen. */
  peakRss: number;
}

/** One entry of each flood, `i` making names unique. */
function floodEntry(kind: FloodKind, i: number): TarSpec {
  switch (kind) {
    case "xattrs": // a 1 MiB pax xattr each (the pax record stays under the default 1 MiB pax cap)
      return { name: `f${i}`, xattrs: { "user.flood": new Uint8Array((1 << 20) - 64).fill(0x61) } };
    case "names": // ~3.8 K-character names: 15 components of 250
      return { name: `${i}/${Array.from({ length: 15 }, () => "n".repeat(250)).join("/")}`, data: "" };
    case "links": // 4,000-character symlink targets
      return { name: `l${i}`, type: "symlink", linkname: `${i}/${"t".repeat(3990)}` };
    case "entries":
      return { name: `e${i}`, data: "" };
  }
}

/**
 * Runs the child: builds a lower from `count` entries of `kind` with the
 * caps `env` sets, and returns what it measured. With `readOnly` it stops
 * once the layer is read (the records held, no tree or metadata written),
 * which is where a flood peaks.
 *
 * @example
 * ```ts
 * import { measureFlood } from "./lower_memory.ts";
 * const r = await measureFlood("xattrs", 300, { KRUNBOX_PULL_MAX_XATTR_BYTES: "67108864" });
 * console.log(r.code, (r.peakLive - r.baseLive) >> 20, "MiB");
 * ```
 */
export async function measureFlood(
  kind: FloodKind,
  count: number,
  env: Record<string, string>,
  options: { readOnly?: boolean } = {},
): Promise<FloodResult> {
  const mode = options.readOnly ? "read" : "build";
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", import.meta.filename!, kind, String(count), mode],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    throw new Error(`the measuring child failed (${out.code}):\n${new TextDecoder().decode(out.stderr)}\n${text}`);
  }
  return JSON.parse(text.split("\n").at(-1)!) as FloodResult;
}

async function child(kind: FloodKind, count: number, mode: string): Promise<FloodResult> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error("run with --v8-flags=--expose-gc");
  const live = () => {
    // V8 sweeps freed ArrayBuffers in the background: a second full GC finishes the first one's sweep.
    gc();
    gc();
    const m = Deno.memoryUsage();
    return { live: m.heapUsed + m.external, rss: m.rss };
  };
  const dir = await Deno.makeTempDir({ prefix: "krunbox-flood-" });
  const base = live();
  const result: FloodResult = {
    produced: 0,
    baseLive: base.live,
    peakLive: base.live,
    baseRss: base.rss,
    peakRss: base.rss,
  };
  const every = Math.max(1, Math.floor(count / 50));
  function* flood(): Generator<TarSpec> {
    for (let i = 0; i < count; i++) {
      if (i % every === 0) {
        const m = live();
        result.peakLive = Math.max(result.peakLive, m.live);
        result.peakRss = Math.max(result.peakRss, m.rss);
      }
      result.produced++;
      yield floodEntry(kind, i);
    }
  }
  try {
    using lower = await LowerBuilder.create(`${dir}/lower.erofs`);
    const entries = await lower.read(tarStream(flood()));
    const m = live(); // everything read, nothing applied yet: the most the records hold
    result.peakLive = Math.max(result.peakLive, m.live);
    result.peakRss = Math.max(result.peakRss, m.rss);
    if (mode === "build") {
      lower.apply(0, entries);
      await lower.finish();
    }
  } catch (e) {
    if (!(e instanceof ImageError)) throw e;
    result.code = e.code;
    result.message = e.message;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return result;
}

if (import.meta.main) {
  const [kind, count, mode] = Deno.args;
  console.log(JSON.stringify(await child(kind as FloodKind, Number(count), mode)));
}
