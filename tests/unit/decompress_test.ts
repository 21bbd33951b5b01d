import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { ImageError } from "../../src/errors.ts";
import { gunzip, gunzipEngine } from "../../src/image/gunzip.ts";
import { unzstd, zstdSupport } from "../../src/image/unzstd.ts";
import { type Codec, decoderStream } from "../../src/image/decoder.ts";
import { zstdCompress } from "../util/zstd.ts";
import { loadIsal } from "../../ffi/isal.ts";
import { concatBytes } from "../../src/util/bytes.ts";
import { chunkedStream } from "../util/tar_writer.ts";
import { skipped } from "../util/require.ts";

/** Random bytes with some redundancy, so gzip has matches to encode. */
function sample(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    out[i] = i % 7 === 0 ? x & 0xff : "krunbox-layer "[i % 14].charCodeAt(0);
  }
  return out;
}

async function gzip(data: Uint8Array): Promise<Uint8Array> {
  const cs = new CompressionStream("gzip") as unknown as TransformStream<Uint8Array, Uint8Array>;
  return new Uint8Array(await new Response(ReadableStream.from([data]).pipeThrough(cs)).arrayBuffer());
}

async function inflate(engine: "isal" | "builtin", gz: Uint8Array, sizes?: number[]): Promise<Uint8Array> {
  const saved = Deno.env.get("KRUNBOX_GUNZIP");
  Deno.env.set("KRUNBOX_GUNZIP", engine);
  try {
    assertEquals(gunzipEngine(), engine);
    const chunks: Uint8Array[] = [];
    for await (const c of chunkedStream(gz, sizes ?? [1, 100, 70000, 3]).pipeThrough(gunzip("layer x"))) {
      chunks.push(c.slice());
    }
    return concatBytes(chunks);
  } finally {
    if (saved === undefined) Deno.env.delete("KRUNBOX_GUNZIP");
    else Deno.env.set("KRUNBOX_GUNZIP", saved);
  }
}

const engines = (): ("isal" | "builtin")[] => {
  if (loadIsal()) return ["isal", "builtin"];
  skipped("isal", "libisal.so.2 is not loadable", "the ISA-L engine");
  return ["builtin"];
};

Deno.test("gunzip: both engines inflate byte-exact, in any input chunking, across output chunks", async (t) => {
  const data = sample(5 << 20);
  const gz = await gzip(data);
  for (const engine of engines()) {
    await t.step(engine, async () => {
      assertEquals(await inflate(engine, gz), data);
      assertEquals(await inflate(engine, gz, [gz.length]), data);
      assertEquals(await inflate(engine, await gzip(new Uint8Array(0))), new Uint8Array(0));
    });
  }
});

Deno.test("gunzip: concatenated members are read on by ISA-L, trailing zeros ignored; built-in refuses them", async (t) => {
  const a = sample(300_000, 2);
  const b = sample(200_000, 3);
  const gz = concatBytes([await gzip(a), await gzip(b), new Uint8Array(1024)]);
  for (const engine of engines()) {
    await t.step(engine, async () => {
      if (engine === "isal") return assertEquals(await inflate(engine, gz), concatBytes([a, b]));
      // The runtime's DecompressionStream fails on a second member: a typed error, never a short root.
      const e = await assertRejects(() => inflate(engine, gz), ImageError);
      assertEquals(e.code, "IMAGE_INVALID");
    });
  }
});

Deno.test("gunzip: truncated, corrupt and non-gzip input is IMAGE_INVALID naming the layer", async (t) => {
  const gz = await gzip(sample(1 << 20, 4));
  const corrupt = gz.slice();
  for (let i = 100; i < 140; i++) corrupt[i] ^= 0x5a;
  const badCrc = gz.slice();
  badCrc[badCrc.length - 6] ^= 0xff;
  const cases: [string, Uint8Array][] = [
    ["truncated", gz.subarray(0, gz.length >> 1)],
    ["corrupt deflate data", corrupt],
    ["wrong CRC", badCrc],
    ["not gzip at all", new TextEncoder().encode("this is a plain tar, not gzip".repeat(40))],
  ];
  for (const engine of engines()) {
    for (const [what, bytes] of cases) {
      await t.step(`${engine}: ${what}`, async () => {
        const e = await assertRejects(() => inflate(engine, bytes), ImageError);
        assertEquals(e.code, "IMAGE_INVALID");
        assert(e.message.includes("layer x"), e.message);
      });
    }
  }
});

Deno.test("gunzip: ISA-L inflates only a few chunks ahead of a slow reader, however well the input compresses", async () => {
  if (skipped("isal", loadIsal() ? undefined : "libisal.so.2 is not loadable")) return;
  // 512 MiB of zeros gzip to about half a megabyte.
  const zeros = new Uint8Array(1 << 20);
  const gz = new Uint8Array(
    await new Response(
      ReadableStream.from((function* () {
        for (let i = 0; i < 512; i++) yield zeros;
      })()).pipeThrough(new CompressionStream("gzip") as unknown as TransformStream<Uint8Array, Uint8Array>),
    ).arrayBuffer(),
  );
  const saved = Deno.env.get("KRUNBOX_GUNZIP");
  Deno.env.delete("KRUNBOX_GUNZIP");
  try {
    const before = Deno.memoryUsage().rss;
    const reader = ReadableStream.from([gz]).pipeThrough(gunzip("layer z")).getReader();
    const first = await reader.read();
    assert(!first.done && first.value.length > 0);
    await new Promise((r) => setTimeout(r, 300)); // time to run ahead, were it unbounded
    const grown = Deno.memoryUsage().rss - before;
    assert(grown < 128 << 20, `RSS grew ${(grown / 2 ** 20).toFixed(0)} MiB with one chunk read`);
    let total = first.value.length;
    for (let r = await reader.read(); !r.done; r = await reader.read()) total += r.value.length;
    assertEquals(total, 512 << 20);
  } finally {
    if (saved !== undefined) Deno.env.set("KRUNBOX_GUNZIP", saved);
  }
});

async function unzstdAll(bytes: Uint8Array, sizes = [1, 100, 70000, 3]): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for await (const c of chunkedStream(bytes, sizes).pipeThrough(unzstd("layer z"))) chunks.push(c.slice());
  return concatBytes(chunks);
}

Deno.test("unzstd: frames decode byte-exact in any chunking; concatenated frames read on; bad input is IMAGE_INVALID", async (t) => {
  if (skipped("zstd", zstdSupport().why)) return;
  const a = sample(5 << 20, 5);
  const b = sample(300_000, 6);
  const za = await zstdCompress(a);
  const zb = await zstdCompress(b, ["-19"]);
  if (!za || !zb) return void skipped("zstd-cli", "the zstd command is missing");
  await t.step("one frame, two frames", async () => {
    assertEquals(await unzstdAll(za), a);
    assertEquals(await unzstdAll(za, [za.length]), a);
    assertEquals(await unzstdAll(concatBytes([za, zb])), concatBytes([a, b]));
  });
  const corrupt = za.slice();
  for (let i = 200; i < 260; i++) corrupt[i] ^= 0x5a;
  const cases: [string, Uint8Array][] = [
    ["truncated", za.subarray(0, za.length >> 1)],
    ["corrupt", corrupt],
    ["not zstd", new TextEncoder().encode("plain tar, not zstd".repeat(50))],
    ["empty", new Uint8Array(0)],
  ];
  for (const [what, bytes] of cases) {
    await t.step(what, async () => {
      const e = await assertRejects(() => unzstdAll(bytes), ImageError);
      assertEquals(e.code, "IMAGE_INVALID");
      assert(e.message.includes("layer z") && e.message.includes("zstd"), e.message);
    });
  }
});

Deno.test("decoder: a cancel during a decoder call never lets the decoder run or be freed under it", async (t) => {
  await t.step("a codec that stops with input left (a zstd frame end)", async () => {
    let closed = 0;
    let runsAfterClose = 0;
    let running = false;
    const codec: Codec = {
      async run(input, out) {
        if (closed) runsAfterClose++;
        running = true;
        await new Promise((r) => setTimeout(r, 20));
        running = false;
        const n = Math.min(1000, input.length, out.length);
        return { consumed: n, produced: n };
      },
      complete: () => true,
      close() {
        assert(!running, "freed while a call was running");
        closed++;
      },
    };
    const ts = decoderStream(codec, "layer m", "mock");
    const w = ts.writable.getWriter();
    w.write(new Uint8Array(1000)).catch(() => {});
    const r = ts.readable.getReader();
    await r.read();
    w.write(new Uint8Array(100_000)).catch(() => {}); // the read-ahead pull starts a call
    await new Promise((res) => setTimeout(res, 5));
    await r.cancel(new Error("the tar reader gave up"));
    await new Promise((res) => setTimeout(res, 100));
    assertEquals([closed, runsAfterClose], [1, 0]);
  });
  await t.step("libzstd, many frames, cancelled after the first chunk", async () => {
    if (skipped("zstd", zstdSupport().why)) return;
    const frames: Uint8Array[] = [];
    for (let i = 0; i < 50; i++) {
      const z = await zstdCompress(sample(40_000, i + 1));
      if (!z) return void skipped("zstd-cli", "the zstd command is missing");
      frames.push(z);
    }
    for (let trial = 0; trial < 20; trial++) {
      const r = ReadableStream.from([concatBytes(frames)]).pipeThrough(unzstd("layer z")).getReader();
      await r.read();
      await r.cancel(new Error("the tar reader gave up")); // a use-after-free here crashes the process
    }
  });
});
