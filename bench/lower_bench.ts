/**
 * The pieces of a pull, one at a time, on a synthetic 64 MiB layer (files
 * of 1–64 KiB, half words, half random letters: it gzips about 2.5:1 like
 * a real Debian layer): inflate with ISA-L
 * against the runtime's `DecompressionStream`, and the tar → EROFS lower
 * build from an uncompressed stream. The side-by-side pull against
 * microsandbox is `bench/pull_vs_msb.ts`.
 *
 *   deno bench -A bench/lower_bench.ts
 */

import { gunzip } from "../src/image/gunzip.ts";
import { unzstd, zstdSupport } from "../src/image/unzstd.ts";
import { zstdCompress } from "../tests/util/zstd.ts";
import { LowerBuilder } from "../src/image/lower.ts";
import { loadIsal } from "../ffi/isal.ts";
import { type TarSpec, writeTar } from "../tests/util/tar_writer.ts";

const words = ["sandbox", "layer", "erofs", "inflate", "tar", "digest", "krunbox", "\n"];
const specs: TarSpec[] = [];
let seed = 1;
let total = 0;
for (let i = 0; total < 64 << 20; i++) {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  const size = 1024 + (seed % (63 << 10));
  let body = "";
  while (body.length < size) {
    seed = (seed * 69069 + 1) >>> 0;
    body += seed & 1
      ? words[(seed >>> 8) % words.length] + " "
      : String.fromCharCode(97 + ((seed >>> 8) % 26), 97 + ((seed >>> 16) % 26), 97 + ((seed >>> 24) % 26));
  }
  specs.push({ name: `usr/share/d${i % 97}/f${i}.txt`, data: body.slice(0, size) });
  total += size;
}
const tar = writeTar(specs);
const gz = new Uint8Array(
  await new Response(
    ReadableStream.from([tar]).pipeThrough(
      new CompressionStream("gzip") as unknown as TransformStream<Uint8Array, Uint8Array>,
    ),
  ).arrayBuffer(),
);
const chunks = (bytes: Uint8Array) => {
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += 64 << 10) out.push(bytes.subarray(i, i + (64 << 10)));
  return ReadableStream.from(out);
};
const drain = async (s: ReadableStream<Uint8Array>) => {
  let n = 0;
  for await (const c of s) n += c.length;
  if (n !== tar.length) throw new Error(`inflated ${n} bytes, want ${tar.length}`);
};
const dir = await Deno.makeTempDir({ prefix: "krunbox-lower-bench-" });

for (const engine of ["isal", "builtin"] as const) {
  Deno.bench({
    name: `inflate ${(gz.length / 1e6).toFixed(0)} MB → ${(tar.length / 1e6).toFixed(0)} MB (${engine})`,
    group: "inflate",
    baseline: engine === "builtin",
    ignore: engine === "isal" && !loadIsal(),
    async fn() {
      Deno.env.set("KRUNBOX_GUNZIP", engine);
      await drain(chunks(gz).pipeThrough(gunzip("bench")));
    },
  });
}

// The same layer as tar+zstd (level 3, the zstd CLI's default), when the CLI is there.
const zst = await zstdCompress(tar);
Deno.bench({
  name: `zstd ${((zst?.length ?? 0) / 1e6).toFixed(0)} MB → ${(tar.length / 1e6).toFixed(0)} MB (libzstd)`,
  group: "inflate",
  ignore: !zst || !zstdSupport().ok,
  async fn() {
    await drain(chunks(zst!).pipeThrough(unzstd("bench")));
  },
});

Deno.bench(`tar → EROFS lower, ${specs.length} files, ${(tar.length / 1e6).toFixed(0)} MB`, async () => {
  using lower = await LowerBuilder.create(`${dir}/lower.erofs`);
  lower.apply(0, await lower.read(chunks(tar)));
  await lower.finish();
});

globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
