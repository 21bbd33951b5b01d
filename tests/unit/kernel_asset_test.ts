import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertThrows } from "../util/assert.ts";
import { bzImagePayload, extractVmlinux, hasPvhEntry } from "../../src/host/provision/vmlinux.ts";
import { stripModuleSignature } from "../../src/host/provision/module_sig.ts";
import { BackendUnavailableError } from "../../src/errors.ts";
import { runCommand } from "../../src/util/command.ts";
import { INITRAMFS_LAYOUT, qemuChecks } from "../../src/vmm/prereqs.ts";
import { inHome } from "../util/temp_home.ts";

/** One ELF note: name, type, desc length (Linux's Xen notes have 6-, 8- and 41-byte descs). */
type Note = readonly [name: string, type: number, descLength: number];

/**
 * A minimal ELF64 as Linux's vmlinux is laid out: `loads` PT_LOAD headers
 * first, then one PT_NOTE holding `notes`, padded with `tail` bytes.
 */
function elf(notes: readonly Note[], opts: { loads?: number; tail?: number } = {}): Uint8Array<ArrayBuffer> {
  const body: number[] = [];
  for (const [name, type, descLength] of notes) {
    const n = new TextEncoder().encode(name + "\0");
    const head = new DataView(new ArrayBuffer(12));
    head.setUint32(0, n.length, true);
    head.setUint32(4, descLength, true);
    head.setUint32(8, type, true);
    const pad = (k: number) => new Array((4 - k % 4) % 4).fill(0);
    body.push(...new Uint8Array(head.buffer), ...n, ...pad(n.length), ...new Array(descLength).fill(0x5a));
    body.push(...pad(descLength));
  }
  const loads = opts.loads ?? 4;
  const phnum = loads + 1;
  const notesAt = 64 + 56 * phnum;
  const out = new Uint8Array(notesAt + body.length + (opts.tail ?? 4096));
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setBigUint64(0x20, 64n, true); // e_phoff
  v.setUint16(0x36, 56, true); // e_phentsize
  v.setUint16(0x38, phnum, true); // e_phnum
  for (let i = 0; i < loads; i++) v.setUint32(64 + 56 * i, 1, true); // PT_LOAD
  const note = 64 + 56 * loads;
  v.setUint32(note, 4, true); // PT_NOTE
  v.setBigUint64(note + 8, BigInt(notesAt), true); // p_offset
  v.setBigUint64(note + 32, BigInt(body.length), true); // p_filesz
  out.set(body, notesAt);
  for (let i = notesAt + body.length; i < out.length; i++) out[i] = i % 251;
  return out;
}

/** A bzImage shell around `payload` (boot protocol 2.15). */
function bzImage(
  payload: Uint8Array<ArrayBuffer>,
  opts: { version?: number; length?: number; setupSects?: number; payloadOffset?: number } = {},
): Uint8Array<ArrayBuffer> {
  const sects = opts.setupSects ?? 3;
  const start = ((sects || 4) + 1) * 512 + (opts.payloadOffset ?? 0x40);
  const out = new Uint8Array(start + payload.length);
  const v = new DataView(out.buffer);
  out[0x1f1] = sects;
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, opts.version ?? 0x20f, true);
  v.setUint32(0x248, opts.payloadOffset ?? 0x40, true);
  v.setUint32(0x24c, opts.length ?? payload.length, true);
  out.set(payload, start);
  return out;
}

async function gzip(data: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  return new Uint8Array(
    await new Response(new Blob([data]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer(),
  );
}

/** Linux's lz4 payload: `lz4 -l` (legacy frames) with the size appended. */
async function lz4Payload(
  dir: string,
  data: Uint8Array<ArrayBuffer>,
  size = data.length,
): Promise<Uint8Array<ArrayBuffer>> {
  await Deno.writeFile(join(dir, "in"), data);
  await runCommand("lz4", ["-l", "-f", "-q", join(dir, "in"), join(dir, "in.lz4")]);
  const frames = await Deno.readFile(join(dir, "in.lz4"));
  const out = new Uint8Array(frames.length + 4);
  out.set(frames);
  new DataView(out.buffer).setUint32(frames.length, size, true);
  return out;
}

/** As Debian's vmlinux: four PT_LOADs, then notes with odd-sized descs before the PHYS32_ENTRY one. */
const PVH = elf([["Xen", 6, 6], ["Linux", 1, 41], ["Xen", 5, 8], ["Xen", 18, 8]]);

Deno.test("a PVH entry note is found after other headers and odd-sized notes; lookalikes and garbage are not", () => {
  assert(hasPvhEntry(PVH));
  assert(hasPvhEntry(elf([["Xen", 18, 4]], { loads: 0 })), "the only header, a 4-byte entry");
  assert(!hasPvhEntry(elf([["Xen", 6, 6], ["Linux", 18, 8]])), "type 18 under another name is not PVH");
  assert(!hasPvhEntry(elf([["Xen", 18, 2]])), "an entry too short for an address");
  assert(!hasPvhEntry(elf([["Xen", 6, 6], ["Xen", 5, 8]])), "no entry note at all");
  const elf32 = PVH.slice();
  elf32[4] = 1;
  assert(!hasPvhEntry(elf32));
  assert(!hasPvhEntry(new Uint8Array(200)));
  assert(!hasPvhEntry(PVH.slice(0, 100)), "program headers past the end");
});

Deno.test("hostile note sizes end the walk: no hang, no RangeError", () => {
  for (const [namesz, descsz] of [[0x80000000, 0], [0x80000000, 0x7ffffff4], [0xffffffff, 0xffffffff]]) {
    const image = elf([["Xen", 5, 8], ["Xen", 18, 8]]);
    const notesAt = 64 + 56 * 5;
    const v = new DataView(image.buffer);
    v.setUint32(notesAt, namesz, true);
    v.setUint32(notesAt + 4, descsz, true);
    assertEquals(hasPvhEntry(image), false);
  }
});

Deno.test("extractVmlinux unpacks gzip and lz4 payloads to the same ELF, checked", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const shells = [{}, { setupSects: 0, payloadOffset: 0x1000 }];
    for (const payload of [await gzip(PVH), await lz4Payload(dir, PVH)]) {
      for (const shell of shells) {
        await Deno.writeFile(join(dir, "vmlinuz"), bzImage(payload, shell));
        await Deno.remove(join(dir, "vmlinux")).catch(() => {});
        await extractVmlinux(join(dir, "vmlinuz"), join(dir, "vmlinux"));
        assertEquals(await Deno.readFile(join(dir, "vmlinux")), PVH);
      }
    }
    // Positive controls above; now an lz4 payload whose appended size lies, an ELF without the note, and payloads
    // that do not unpack (each a typed error that says so, with the tool's or stream's error as the cause).
    const refused: Array<[Uint8Array<ArrayBuffer>, string]> = [
      [bzImage(await lz4Payload(dir, PVH, PVH.length + 1)), "its header says"],
      [bzImage(await gzip(elf([["Xen", 5, 8]]))), "PVH entry"],
      [bzImage(new Uint8Array([0x1f, 0x8b, 8, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5])), "gzip payload did not"],
      [bzImage(new Uint8Array([0x02, 0x21, 0x4c, 0x18, 0xff, 0xff, 0xff, 0x7f, 9, 9, 0, 0, 0, 1])), "lz4 payload did"],
    ];
    for (const [image, text] of refused) {
      await Deno.writeFile(join(dir, "vmlinuz"), image);
      const e = await assertRejects(
        () => extractVmlinux(join(dir, "vmlinuz"), join(dir, "vmlinux")),
        BackendUnavailableError,
        text,
      );
      if (text.includes("did not")) assert(e.cause !== undefined, "the unpacker's error is the cause");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bzImage that is short, headerless, too old, with a payload past its end or of another format is refused", async () => {
  const ok = bzImage(await gzip(PVH));
  assertEquals(bzImagePayload(ok).format, "gzip");
  const cases: Array<[Uint8Array<ArrayBuffer>, string]> = [
    [ok.slice(0, 0x240), "no bzImage header"],
    [new Uint8Array(4096), "no bzImage header"],
    [bzImage(await gzip(PVH), { version: 0x206 }), "older than 2.08"],
    [bzImage(await gzip(PVH), { length: 1 << 20 }), "outside the file"],
    [bzImage(new Uint8Array([1, 2, 3, 4]), { length: 4 }), "outside the file"],
    [bzImage(new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 0, 0, 0])), "magic 0xfd377a58"],
  ];
  for (const [image, text] of cases) {
    const e = assertThrows(() => bzImagePayload(image), BackendUnavailableError);
    assert(e.message.includes(text), e.message);
  }
});

/** A module body followed by a signature trailer as `sign-file` writes it. */
function signed(body: Uint8Array, sigLength: number, opts: { idType?: number; sigLenField?: number } = {}) {
  const marker = new TextEncoder().encode("~Module signature appended~\n");
  const info = new Uint8Array(12);
  info[2] = opts.idType ?? 2; // PKEY_ID_PKCS7
  new DataView(info.buffer).setUint32(8, opts.sigLenField ?? sigLength, false);
  return new Uint8Array([...body, ...new Uint8Array(sigLength).fill(0xab), ...info, ...marker]);
}

Deno.test("a module's signature trailer is cut off exactly; unsigned modules pass as they are; a bad trailer is refused", () => {
  const body = new TextEncoder().encode("\x7fELF module body");
  assertEquals(stripModuleSignature(signed(body, 37)), body);
  assertEquals(stripModuleSignature(body), body);
  // A marker that differs in its first byte is no trailer: nothing is cut.
  const near = signed(body, 37);
  near[near.length - 28] = 0x21;
  assertEquals(stripModuleSignature(near), near);
  // A signature as long as everything before it leaves no module; another id type is not sign-file's.
  const all = signed(new Uint8Array(0), 37);
  assertThrows(() => stripModuleSignature(all), BackendUnavailableError);
  assertThrows(() => stripModuleSignature(signed(body, 37, { sigLenField: 1 << 20 })), BackendUnavailableError);
  assertThrows(() => stripModuleSignature(signed(body, 37, { idType: 1 })), BackendUnavailableError);
});

Deno.test("the initramfs check fails when the kernel, the agent or the layout it was built for is not this one", async () => {
  await inHome(async (home) => {
    const put = async (asset: string, file: string, version: string) => {
      await Deno.mkdir(join(home, "assets", asset), { recursive: true });
      await Deno.writeTextFile(join(home, "assets", asset, file), "x");
      await Deno.writeTextFile(join(home, "assets", asset, "VERSION"), version);
    };
    const kernel = "linux-image-6.1=6.1.1-1 vmlinux-pvh unsigned-modules";
    await put("kernel", "vmlinux", kernel);
    await put("agent", "krunbox-agent", "src-aaaa");
    await put("initramfs", "initramfs.cpio", `agent-src-aaaa+${kernel}+${INITRAMFS_LAYOUT}`);
    const check = async () => (await qemuChecks()).find((c) => c.name === "guest initramfs")!;
    const stale = async (why: string) => {
      const c = await check();
      assert(
        !c.ok && c.detail.includes(`is stale: it ${why}`) && c.fix?.includes("setup"),
        `${why}: ${c.detail}`,
      );
    };
    assertEquals((await check()).ok, true, "built from the installed ones");
    // A kernel stamp that is a prefix of the one the archive names is another kernel.
    await put("kernel", "vmlinux", "linux-image-6.1=6.1.1-1 vmlinux-pvh");
    await stale("was built for another kernel");
    await put("kernel", "vmlinux", kernel);
    await put("agent", "krunbox-agent", "src-bbbb");
    await stale("was built with another agent");
    await put("agent", "krunbox-agent", "src-aaaa");
    assertEquals((await check()).ok, true, "the installed ones again");
    // An archive provisioned before the base boot config: its agent would wait for a config no host sends.
    await put("initramfs", "initramfs.cpio", `agent-src-aaaa+${kernel}`);
    await stale("has an older layout");
    await put("initramfs", "initramfs.cpio", `agent-src-aaaa+${kernel}+base0`);
    await stale("has layout base0");
    // Debian versions hold `+` (6.1.158-1+deb12u1): an archive for a kernel whose stamp extends the installed one's
    // with a `+` part is another kernel, not another layout.
    await put("initramfs", "initramfs.cpio", `agent-src-aaaa+${kernel}+deb12u1+${INITRAMFS_LAYOUT}`);
    await stale("was built for another kernel");
  });
});
