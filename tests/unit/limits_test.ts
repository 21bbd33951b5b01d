/**
 * Caps per pull (src/image/limits.ts): each hostile layer built by
 * tar_writer.ts goes one step over a cap and fails with IMAGE_INVALID
 * naming the limit and its variable, beside a positive control one step
 * under it; the floods that used to fill the host's memory are measured in
 * a child process (live heap after GC), each beside a control run with the
 * cap lifted that shows the measurement sees the flood.
 */

import { assert, assertEquals } from "../util/assert.ts";
import { chunkedStream, paxRecord, type TarSpec, writeTar } from "../util/tar_writer.ts";
import { measureFlood } from "../util/lower_memory.ts";
import { ImageError } from "../../src/errors.ts";
import { CAP_VARIABLES, type PullCaps, pullCaps } from "../../src/image/limits.ts";
import { LowerBuilder } from "../../src/image/lower.ts";
import { SETTINGS } from "../../src/settings.ts";

const MiB = 2 ** 20;
const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;

/** Builds a lower from plain tar layers with `caps` over the defaults; the ImageError, or undefined on success. */
async function build(
  caps: Partial<PullCaps>,
  layers: readonly (Uint8Array | ReadableStream<Uint8Array>)[],
): Promise<{ error?: ImageError; size: number; kinds: string[] }> {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-caps-" });
  const path = `${dir}/lower.erofs`;
  try {
    using lower = await LowerBuilder.create(path, { caps: { ...pullCaps(), ...caps } });
    const kinds: string[] = [];
    try {
      const read = await Promise.all(
        layers.map((l) => lower.read(l instanceof Uint8Array ? chunkedStream(l, [700, 65536]) : l)),
      );
      read.forEach((entries, i) => {
        for (const e of entries) if (e.data) kinds.push(e.data.kind);
        lower.apply(i, entries);
      });
      await lower.finish();
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      return { error: e, size: (await Deno.stat(path)).size, kinds };
    }
    return { size: (await Deno.stat(path)).size, kinds };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The positive control builds; the hostile case fails with IMAGE_INVALID naming `variable` and the limit. */
async function underAndOver(
  caps: Partial<PullCaps>,
  under: readonly Uint8Array[],
  over: readonly Uint8Array[],
  variable: string,
  limit: number,
): Promise<ImageError> {
  const ok = await build(caps, under);
  assertEquals(ok.error, undefined, `just under the cap: ${ok.error?.message}`);
  const bad = await build(caps, over);
  assert(bad.error, `one step over ${variable} must fail`);
  assertEquals(bad.error.code, "IMAGE_INVALID");
  assert(bad.error.message.includes(variable), bad.error.message);
  assert(bad.error.message.includes(`limit of ${limit} `), bad.error.message);
  return bad.error;
}

const files = (n: number, prefix = "f") => Array.from({ length: n }, (_, i): TarSpec => ({ name: `${prefix}${i}` }));
/** A name of `parts` components of 250 characters under `top`. */
const longName = (top: string, parts: number) =>
  `${top}/${Array.from({ length: parts }, () => "n".repeat(250)).join("/")}`;

Deno.test("limits: defaults protect a 24 GiB host, each cap follows its variable, bad values are ignored", () => {
  const vars = CAP_VARIABLES;
  const saved = Object.values(vars).map((v) => [v, Deno.env.get(v)] as const);
  try {
    for (const v of Object.values(vars)) Deno.env.delete(v);
    const defaults = pullCaps();
    assertEquals(defaults, {
      maxBytes: 32 * 2 ** 30,
      maxEntries: 1_000_000,
      maxNameBytes: 256 * MiB,
      maxXattrBytes: 64 * MiB,
      maxEntryXattrBytes: MiB,
      maxPaxBytes: MiB,
      memoryBytes: 256 * MiB,
    });
    for (const [cap, v] of Object.entries(vars) as [keyof PullCaps, string][]) {
      Deno.env.set(v, "12345");
      assertEquals(pullCaps()[cap], 12345, v);
      for (const bad of ["abc", "-1", "1.5", "0"]) {
        Deno.env.set(v, bad);
        assertEquals(pullCaps()[cap], defaults[cap], `${v}=${bad} falls back to the default`);
      }
      Deno.env.delete(v);
      assert(SETTINGS.some((s) => s.name === v), `${v} has a SETTINGS row`);
    }
    // EROFS block numbers are 32 bits: a larger byte cap is cut to what an image can address
    Deno.env.set("KRUNBOX_PULL_MAX_BYTES", String(2 ** 50));
    assert(pullCaps().maxBytes < 2 ** 32 * 4096, "maxBytes fits 32-bit block numbers");
  } finally {
    for (const [v, value] of saved) value === undefined ? Deno.env.delete(v) : Deno.env.set(v, value);
  }
});

Deno.test("limits: every cap variable is in the README's Settings table", async () => {
  const readme = await Deno.readTextFile(new URL("../../README.md", import.meta.url));
  const table = readme.slice(readme.indexOf("## Settings"), readme.indexOf("\n## ", readme.indexOf("## Settings") + 1));
  for (const s of SETTINGS) assert(table.includes(`\`${s.name}\``), `${s.name} is missing from the README`);
});

Deno.test("limits: entries per image, counted across layers", async () => {
  await underAndOver(
    { maxEntries: 100 },
    [writeTar(files(100))],
    [writeTar(files(101))],
    "KRUNBOX_PULL_MAX_ENTRIES",
    100,
  );
  // one image, two layers: 60 + 41 entries go over a cap of 100, 60 + 40 do not
  const ok = await build({ maxEntries: 100 }, [writeTar(files(60, "a")), writeTar(files(40, "b"))]);
  assertEquals(ok.error, undefined);
  const bad = await build({ maxEntries: 100 }, [writeTar(files(60, "a")), writeTar(files(41, "b"))]);
  assert(bad.error?.message.includes("KRUNBOX_PULL_MAX_ENTRIES"), bad.error?.message);
});

Deno.test("limits: name and link-target characters per image (long names, long targets)", async () => {
  // each name is held twice (as written and normalized): "<i>/" + 4 components of 250
  const names = (n: number) => writeTar(Array.from({ length: n }, (_, i) => ({ name: longName(`${i}`, 4) })));
  const perEntry = 2 * longName("0", 4).length;
  await underAndOver(
    { maxNameBytes: perEntry * 5 },
    [names(5)],
    [names(6)],
    "KRUNBOX_PULL_MAX_NAME_BYTES",
    perEntry * 5,
  );
  const target = "t".repeat(4000);
  const links = (n: number) =>
    writeTar(Array.from({ length: n }, (_, i) => ({ name: `l${i}`, type: "symlink" as const, linkname: target })));
  await underAndOver(
    { maxNameBytes: 3 * (4000 + 4) },
    [links(3)],
    [links(4)],
    "KRUNBOX_PULL_MAX_NAME_BYTES",
    3 * (4000 + 4),
  );
  // a link target longer than PATH_MAX is refused as it is read, whatever the caps
  const huge = await build({}, [writeTar([{ name: "l", type: "hardlink", linkname: "x".repeat(5000) }])]);
  assert(huge.error?.message.includes("link target is longer than 4096"), huge.error?.message);
});

Deno.test("limits: xattr bytes per entry and per image", async () => {
  const withXattr = (n: number, value: number) =>
    writeTar(Array.from({ length: n }, (_, i) => ({ name: `x${i}`, xattrs: { "user.x": "v".repeat(value) } })));
  // "user.x" (6) + value bytes per entry
  await underAndOver(
    { maxEntryXattrBytes: 16384 },
    [withXattr(1, 16384 - 6)],
    [withXattr(1, 16384 - 5)],
    "KRUNBOX_PULL_MAX_ENTRY_XATTR_BYTES",
    16384,
  );
  await underAndOver(
    { maxXattrBytes: 6 * 10246 },
    [withXattr(6, 10240)],
    [withXattr(7, 10240)],
    "KRUNBOX_PULL_MAX_XATTR_BYTES",
    6 * 10246,
  );
});

Deno.test("limits: one pax header, one GNU long name, and the pax records in force", async () => {
  // a pax "path" record of n characters takes n + 13 bytes ("NNNN path=…\n")
  const paxName = (n: number) => writeTar([{ name: `${"p/".repeat(n / 2 - 1)}pp`, long: "pax" }]);
  await underAndOver({ maxPaxBytes: 4096 }, [paxName(4080)], [paxName(4090)], "KRUNBOX_PULL_MAX_PAX_BYTES", 4096);
  const gnuName = (n: number) => writeTar([{ name: `${"g/".repeat(n / 2 - 1)}gg`, long: "gnu" }]);
  await underAndOver({ maxPaxBytes: 4096 }, [gnuName(4094)], [gnuName(4096)], "KRUNBOX_PULL_MAX_PAX_BYTES", 4096);
  // global records of several headers add up (each header alone is under the cap)
  const global = (sizes: number[]) =>
    writeTar([
      ...sizes.map((n, i): TarSpec => ({ name: `g${i}`, typeflag: "g", data: paxRecord(`k${i}`, new Uint8Array(n)) })),
      { name: "e" },
    ]);
  const err = await underAndOver(
    { maxPaxBytes: 4096 },
    [global([1500, 1500, 1000])],
    [global([1500, 1500, 1500])],
    "KRUNBOX_PULL_MAX_PAX_BYTES",
    4096,
  );
  assert(err.message.includes("global pax records"), err.message);
});

Deno.test("limits: uncompressed bytes per image; a huge declared size fails at its header, nothing written", async () => {
  const file = (bytes: number) => writeTar([{ name: "big.bin", data: new Uint8Array(bytes).fill(7) }]);
  // the tar stream of one file: 512-byte header, the data padded to 512, 1 KiB end
  await underAndOver(
    { maxBytes: MiB },
    [file(MiB - 1536)],
    [file(MiB - 1535)],
    "KRUNBOX_PULL_MAX_BYTES",
    MiB,
  );
  // a pax size of 1 TiB with no data: refused at the header, before a byte of it is written to the lower
  const huge = writeTar([{ name: "sparse-looking", pax: { size: String(2 ** 40) } }], { end: false });
  const r = await build({}, [huge]);
  assert(r.error?.message.includes("KRUNBOX_PULL_MAX_BYTES"), r.error?.message);
  assert(r.error?.message.includes(`says it has ${2 ** 40} bytes`), r.error?.message);
  assertEquals(r.size, 0, "the lower was not written to");
  // the positive control of the same shape: a declared size that fits, truncated, is an ordinary truncated archive
  const small = writeTar([{ name: "short", pax: { size: "5000" } }], { end: false });
  const s = await build({}, [small]);
  assert(s.error?.message.includes("truncated"), s.error?.message);
});

Deno.test("limits: KRUNBOX_PULL_MEMORY_BYTES moves small files to disk rather than failing", async () => {
  const tar = writeTar([{ name: "a", data: "small" }, { name: "b", data: "x".repeat(3000) }]);
  assertEquals((await build({}, [tar])).kinds, ["memory", "memory"]);
  assertEquals((await build({ memoryBytes: 1000 }, [tar])).kinds, ["memory", "blocks"]);
  const none = await build({ memoryBytes: 1 }, [tar]);
  assertEquals([none.error, none.kinds], [undefined, ["blocks", "blocks"]]);
});

Deno.test("limits: 300 entries with a 1 MiB pax xattr each stop at 64 MiB; the heap stays bounded", async () => {
  // The case that held 335 MB: with the default caps the build fails with the xattr cap, having held
  // about the cap; with the cap lifted (the control) the same layer holds all of it.
  const capped = await measureFlood("xattrs", 300, {});
  const lifted = await measureFlood("xattrs", 300, { KRUNBOX_PULL_MAX_XATTR_BYTES: String(2 ** 40) }, {
    readOnly: true,
  });
  const under = await measureFlood("xattrs", 60, {});
  const grow = (r: typeof capped) => r.peakLive - r.baseLive;
  console.log(
    `xattr flood: capped ${mib(grow(capped))} live (RSS +${mib(capped.peakRss - capped.baseRss)}), ` +
      `${capped.produced} entries read; cap lifted ${mib(grow(lifted))} (RSS +${
        mib(lifted.peakRss - lifted.baseRss)
      }); ` +
      `60 entries ${mib(grow(under))}`,
  );
  assertEquals(capped.code, "IMAGE_INVALID");
  assert(capped.message?.includes("KRUNBOX_PULL_MAX_XATTR_BYTES"), capped.message);
  assert(capped.produced < 70, `stopped near the cap (${capped.produced} entries)`);
  assert(grow(capped) < 64 * MiB + 16 * MiB, `capped build held ${mib(grow(capped))}`);
  assertEquals([lifted.code, under.code], [undefined, undefined], lifted.message ?? under.message);
  assert(grow(lifted) > 250 * MiB, `the control holds the flood (${mib(grow(lifted))}): the measurement sees it`);
});

Deno.test("limits: long names and long link targets stop at the name cap; the heap stays bounded", async () => {
  const cap = 8 * MiB;
  const grow = (r: { peakLive: number; baseLive: number }) => r.peakLive - r.baseLive;
  for (const kind of ["names", "links"] as const) {
    const capped = await measureFlood(kind, 6000, { KRUNBOX_PULL_MAX_NAME_BYTES: String(cap) });
    const control = await measureFlood(kind, 6000, { KRUNBOX_PULL_MAX_NAME_BYTES: String(2 ** 40) }, {
      readOnly: true,
    });
    console.log(`${kind} flood: capped at 8 Mi characters ${mib(grow(capped))} live; cap lifted ${mib(grow(control))}`);
    assertEquals(capped.code, "IMAGE_INVALID");
    assert(capped.message?.includes("KRUNBOX_PULL_MAX_NAME_BYTES"), capped.message);
    assert(grow(capped) < cap + 12 * MiB, `capped build held ${mib(grow(capped))}`);
    assertEquals(control.code, undefined, control.message);
    assert(grow(control) > 2 * grow(capped), `the control holds the flood (${mib(grow(control))})`);
  }
});
