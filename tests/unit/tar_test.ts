import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { chunkedStream, fixChecksum, type TarSpec, writeTar } from "../util/tar_writer.ts";
import { ImageError } from "../../src/errors.ts";
import { readTar, type TarEntry } from "../../src/image/tar.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

async function rejectsInvalid(fn: () => Promise<unknown>, includes?: string): Promise<ImageError> {
  const e = await assertRejects(fn, ImageError, includes);
  assertEquals(e.code, "IMAGE_INVALID");
  return e;
}

/** Every entry's header fields and body (bodies read as they come). */
async function readAll(tar: Uint8Array, sizes = [7, 512, 1000, 3]) {
  const out = [];
  for await (const e of readTar(chunkedStream(tar, sizes))) {
    const { name, type, linkname, mode, uid, gid, size, mtime, devmajor, devminor, offset } = e;
    const data = dec.decode(await e.bytes());
    const xattrs = Object.fromEntries([...e.xattrs].map(([k, v]) => [k, [...v]]));
    out.push({ name, type, linkname, mode, uid, gid, size, mtime, devmajor, devminor, offset, data, xattrs });
  }
  return out;
}

Deno.test("tar: files, dirs, symlinks, hard links, devices, modes, owners, mtimes and xattrs are read as written", async () => {
  const binary = new Uint8Array([0, 1, 2, 0xff, 0x0a, 0x3d]);
  const tar = writeTar([
    { name: "./etc/", type: "dir", mode: 0o755, mtime: 1600000000 },
    { name: "./etc/hostname", data: "box\n", mode: 0o640, mtime: 1600000100, uid: 1234, gid: 5678 },
    { name: "./bin/su", data: "#!/bin/sh\n", mode: 0o4755, mtime: 1600000300 },
    { name: "./bin/sg", data: "x", mode: 0o2711 },
    { name: "./tmp/", type: "dir", mode: 0o1777, mtime: 1600000400 },
    { name: "./bin/sh", type: "symlink", linkname: "/bin/busybox", uid: 7, gid: 8 },
    { name: "./bin/su2", type: "hardlink", linkname: "./bin/su" },
    { name: "./empty", data: "", mode: 0o600 },
    { name: "./frac", data: "f", pax: { mtime: "1600000500.25" } },
    { name: "./dev/loop9", type: "block", devmajor: 7, devminor: 9, mode: 0o660, gid: 6 },
    { name: "./dev/null", type: "char", devmajor: 1, devminor: 3, mode: 0o666 },
    { name: "./run/fifo", type: "fifo", mode: 0o620 },
    { name: "./x", data: "", xattrs: { "user.test": "hello", "user.bin": binary } },
    { name: "./big-ids", data: "", pax: { uid: "3000000000", gid: "70000" } },
  ]);
  const got = await readAll(tar);
  const base = { linkname: "", mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 1700000000, devmajor: 0, devminor: 0 };
  const want = [
    { ...base, name: "./etc/", type: "dir", mode: 0o755, mtime: 1600000000, data: "" },
    {
      ...base,
      name: "./etc/hostname",
      type: "file",
      mode: 0o640,
      uid: 1234,
      gid: 5678,
      size: 4,
      mtime: 1600000100,
      data: "box\n",
    },
    { ...base, name: "./bin/su", type: "file", mode: 0o4755, size: 10, mtime: 1600000300, data: "#!/bin/sh\n" },
    { ...base, name: "./bin/sg", type: "file", mode: 0o2711, size: 1, data: "x" },
    { ...base, name: "./tmp/", type: "dir", mode: 0o1777, mtime: 1600000400, data: "" },
    { ...base, name: "./bin/sh", type: "symlink", linkname: "/bin/busybox", uid: 7, gid: 8, data: "" },
    { ...base, name: "./bin/su2", type: "hardlink", linkname: "./bin/su", data: "" },
    { ...base, name: "./empty", type: "file", mode: 0o600, data: "" },
    { ...base, name: "./frac", type: "file", size: 1, mtime: 1600000500.25, data: "f" },
    { ...base, name: "./dev/loop9", type: "block", mode: 0o660, gid: 6, devmajor: 7, devminor: 9, data: "" },
    { ...base, name: "./dev/null", type: "char", mode: 0o666, devmajor: 1, devminor: 3, data: "" },
    { ...base, name: "./run/fifo", type: "fifo", mode: 0o620, data: "" },
    { ...base, name: "./x", type: "file", data: "" },
    { ...base, name: "./big-ids", type: "file", uid: 3000000000, gid: 70000, data: "" },
  ];
  assertEquals(got.map(({ offset: _, xattrs: __, ...rest }) => rest), want);
  assertEquals(got[0].offset, 0);
  assertEquals(got[1].offset, 512, "offset of a member's own header");
  assertEquals(got[12].xattrs, { "user.test": [...enc.encode("hello")], "user.bin": [...binary] });
  assert(got.every((e, i) => i === 12 || Object.keys(e.xattrs).length === 0), "xattrs stay on their own entry");
});

Deno.test("tar: long names and link targets via pax, GNU L/K and the ustar prefix", async () => {
  const deep = Array.from({ length: 12 }, (_, i) => `directory-number-${i}`).join("/");
  const target = `/${"t".repeat(150)}/${"u".repeat(60)}`;
  const cases: TarSpec["long"][] = ["pax", "gnu", "prefix"];
  for (const long of cases) {
    const name = long === "prefix" ? `${deep.slice(0, 140)}/file.txt` : `${deep}/file.txt`;
    const tar = writeTar([
      { name, data: "deep", long },
      { name: "short-link", type: "symlink", linkname: target, long: long === "prefix" ? "pax" : long },
      { name: "after", data: "a" },
    ]);
    const seen: [string, string, string][] = [];
    for await (const e of readTar(chunkedStream(tar, [100]))) {
      seen.push([e.name, e.linkname, e.type === "file" ? dec.decode(await e.bytes()) : ""]);
    }
    assertEquals(seen, [[name, "", "deep"], ["short-link", target, ""], ["after", "", "a"]], `long names via ${long}`);
  }
});

Deno.test("tar: a gzip layer streams through DecompressionStream", async () => {
  const big = new Uint8Array(3 << 20).map((_, i) => (i * 7919) % 251);
  const tar = writeTar([{ name: "a/", type: "dir" }, { name: "a/big.bin", data: big }, { name: "a/small", data: "s" }]);
  const gz = new Uint8Array(
    await new Response(chunkedStream(tar, [65536]).pipeThrough(new CompressionStream("gzip"))).arrayBuffer(),
  );
  const stream = chunkedStream(gz, [1000, 17]).pipeThrough(new DecompressionStream("gzip"));
  const got: [string, Uint8Array][] = [];
  for await (const e of readTar(stream)) got.push([e.name, await e.bytes(Infinity)]);
  assertEquals(got.map(([n, b]) => [n, b.length]), [["a/", 0], ["a/big.bin", big.length], ["a/small", 1]]);
  assert(got[1][1].every((b, i) => b === big[i]), "big.bin read back byte-exact");
  assertEquals(dec.decode(got[2][1]), "s");
  // corrupt gzip is an IMAGE_INVALID too
  const bad = gz.slice();
  bad[bad.length >> 1] ^= 0xff;
  await rejectsInvalid(async () => {
    for await (const e of readTar(chunkedStream(bad).pipeThrough(new DecompressionStream("gzip")))) await e.skip();
  });
});

Deno.test("tar: reading streams lazily, skips unread bodies and refuses late reads", async () => {
  const body = new Uint8Array(1 << 20).fill(0x61);
  const tar = writeTar([{ name: "first", data: body }, { name: "second", data: "2nd" }, { name: "third", data: "3" }]);
  let pulled = 0;
  let off = 0;
  const src = new ReadableStream<Uint8Array>({
    pull(ctl) {
      if (off >= tar.length) return ctl.close();
      const c = tar.slice(off, off + 4096);
      off += c.length;
      pulled += c.length;
      ctl.enqueue(c);
    },
  }, { highWaterMark: 0 });
  const it = readTar(src);
  const first = (await it.next()).value as TarEntry;
  assertEquals([first.name, first.size, first.offset], ["first", body.length, 0]);
  assert(pulled <= 3 * 4096, `read ahead only a chunk or so before the body is asked for (pulled ${pulled})`);
  const head = await first.read();
  assert(head !== null && head.length <= 4096);
  const second = (await it.next()).value as TarEntry; // the rest of "first" is skipped
  await assertRejects(() => first.read(), Error, "moved past");
  assertEquals(second.name, "second");
  assertEquals(dec.decode(new Uint8Array(await new Response(second.body).arrayBuffer())), "2nd");
  const third = (await it.next()).value as TarEntry;
  assertEquals(dec.decode(await third.bytes()), "3");
  assert((await it.next()).done);
  // breaking out early cancels the source
  let cancelled = false;
  const stream = new ReadableStream<Uint8Array>({
    start(ctl) {
      ctl.enqueue(tar.slice(0, 4096));
    },
    cancel() {
      cancelled = true;
    },
  });
  for await (const e of readTar(stream)) {
    assertEquals(e.name, "first");
    break;
  }
  assert(cancelled, "the source stream is cancelled when the loop breaks");
});

Deno.test("tar: truncated archives and bad checksums are IMAGE_INVALID naming the entry", async () => {
  const tar = writeTar([{ name: "ok", data: "fine" }, { name: "victim", data: "x".repeat(3000) }]);
  const drain = async (bytes: Uint8Array) => {
    for await (const e of readTar(chunkedStream(bytes, [333]))) await e.skip();
  };
  await drain(tar);
  await rejectsInvalid(() => drain(tar.subarray(0, 1024 + 512 + 1000)), `"victim"`); // mid-body
  await rejectsInvalid(() => drain(tar.subarray(0, 1024 + 100)), "offset 1024"); // mid-header
  await rejectsInvalid(() => drain(tar.subarray(0, tar.length - 1024)), "end-of-archive"); // no end blocks
  await rejectsInvalid(() => drain(new Uint8Array()), "end-of-archive");
  const bad = tar.slice();
  bad[1024 + 10] = 0x41; // inside the name of "victim", checksum not fixed
  await rejectsInvalid(() => drain(bad), "checksum");
  const badNum = tar.slice(0, tar.length);
  badNum.set(enc.encode("9x9"), 1024 + 124);
  fixChecksum(badNum.subarray(1024, 1536));
  await rejectsInvalid(() => drain(badNum), "size is not an octal number");
  await rejectsInvalid(() => drain(writeTar([{ name: "sparse", typeflag: "S" }])), "unsupported entry type");
  await rejectsInvalid(() => drain(writeTar([{ name: "p", pax: { size: "12abc" } }])), "pax size");
  // reading the body (rather than skipping it) fails the same way
  await rejectsInvalid(async () => {
    for await (const e of readTar(chunkedStream(tar.subarray(0, 2000), [333]))) await e.bytes();
  }, "victim");
});
