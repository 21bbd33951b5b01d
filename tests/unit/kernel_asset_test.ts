import { join } from "node:path";
import { assert, assertEquals, assertRejects, assertThrows } from "../util/assert.ts";
import { bzImagePayload, extractVmlinux, hasPvhEntry } from "../../src/host/provision/vmlinux.ts";
import { stripModuleSignature } from "../../src/host/provision/module_sig.ts";
import { BackendUnavailableError } from "../../src/errors.ts";
import { runCommand } from "../../src/util/command.ts";

/** A minimal ELF64 with one PT_NOTE holding `notes` (name, type), padded with `tail` bytes. */
function elf(notes: ReadonlyArray<[string, number]>, tail = 4096): Uint8Array<ArrayBuffer> {
  const body: number[] = [];
  for (const [name, type] of notes) {
    const n = new TextEncoder().encode(name + "\0");
    const desc = [0x50, 0x08, 0x00, 0x01];
    const head = new DataView(new ArrayBuffer(12));
    head.setUint32(0, n.length, true);
    head.setUint32(4, desc.length, true);
    head.setUint32(8, type, true);
    body.push(...new Uint8Array(head.buffer), ...n, ...new Array((4 - n.length % 4) % 4).fill(0), ...desc);
  }
  const out = new Uint8Array(64 + 56 + body.length + tail);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setBigUint64(0x20, 64n, true); // e_phoff
  v.setUint16(0x36, 56, true); // e_phentsize
  v.setUint16(0x38, 1, true); // e_phnum
  v.setUint32(64, 4, true); // PT_NOTE
  v.setBigUint64(64 + 8, 120n, true); // p_offset
  v.setBigUint64(64 + 32, BigInt(body.length), true); // p_filesz
  out.set(body, 120);
  for (let i = 120 + body.length; i < out.length; i++) out[i] = i % 251;
  return out;
}

/** A bzImage shell (boot protocol 2.15, 3 setup sectors) around `payload`, at payload_offset 0x40. */
function bzImage(
  payload: Uint8Array<ArrayBuffer>,
  opts: { version?: number; length?: number } = {},
): Uint8Array<ArrayBuffer> {
  const setup = 4 * 512;
  const out = new Uint8Array(setup + 0x40 + payload.length);
  const v = new DataView(out.buffer);
  out[0x1f1] = 3;
  v.setUint32(0x202, 0x53726448, true);
  v.setUint16(0x206, opts.version ?? 0x20f, true);
  v.setUint32(0x248, 0x40, true);
  v.setUint32(0x24c, opts.length ?? payload.length, true);
  out.set(payload, setup + 0x40);
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

const PVH = elf([["Linux", 6], ["Xen", 5], ["Xen", 18]]);

Deno.test("a PVH entry note is found among other notes; its absence, a 32-bit ELF and garbage are not", () => {
  assert(hasPvhEntry(PVH));
  assert(!hasPvhEntry(elf([["Xen", 5], ["Linux", 18]])), "type 18 under another name is not PVH");
  const elf32 = PVH.slice();
  elf32[4] = 1;
  assert(!hasPvhEntry(elf32));
  assert(!hasPvhEntry(new Uint8Array(200)));
  const cut = PVH.slice(0, 100); // program header past the end
  assert(!hasPvhEntry(cut));
});

Deno.test("extractVmlinux unpacks gzip and lz4 payloads to the same ELF, checked", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const payload of [await gzip(PVH), await lz4Payload(dir, PVH)]) {
      await Deno.writeFile(join(dir, "vmlinuz"), bzImage(payload));
      await extractVmlinux(join(dir, "vmlinuz"), join(dir, "vmlinux"));
      assertEquals(await Deno.readFile(join(dir, "vmlinux")), PVH);
    }
    // Positive control above; now an lz4 payload whose appended size lies, and an ELF without the note.
    await Deno.writeFile(join(dir, "vmlinuz"), bzImage(await lz4Payload(dir, PVH, PVH.length + 1)));
    await assertRejects(
      () => extractVmlinux(join(dir, "vmlinuz"), join(dir, "vmlinux")),
      BackendUnavailableError,
      "its header says",
    );
    await Deno.writeFile(join(dir, "vmlinuz"), bzImage(await gzip(elf([["Linux", 6]]))));
    await assertRejects(
      () => extractVmlinux(join(dir, "vmlinuz"), join(dir, "vmlinux")),
      BackendUnavailableError,
      "PVH entry",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bzImage without a header, too old, with a payload past its end or of another format is refused", async () => {
  const ok = bzImage(await gzip(PVH));
  assertEquals(bzImagePayload(ok).format, "gzip");
  const cases: Array<[Uint8Array<ArrayBuffer>, string]> = [
    [new Uint8Array(4096), "no bzImage header"],
    [bzImage(await gzip(PVH), { version: 0x206 }), "older than 2.08"],
    [bzImage(await gzip(PVH), { length: 1 << 20 }), "outside the file"],
    [bzImage(new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 0, 0, 0])), "magic 0xfd377a58"],
  ];
  for (const [image, text] of cases) {
    const e = assertThrows(() => bzImagePayload(image), BackendUnavailableError);
    assert(e.message.includes(text), e.message);
  }
});

Deno.test("a module's signature trailer is cut off exactly; unsigned modules pass as they are; a bad trailer is refused", () => {
  const marker = new TextEncoder().encode("~Module signature appended~\n");
  const body = new TextEncoder().encode("\x7fELF module body");
  const sig = new Uint8Array(37).fill(0xab);
  const info = new Uint8Array(12);
  info[2] = 2; // PKEY_ID_PKCS7
  new DataView(info.buffer).setUint32(8, sig.length, false);
  const signed = new Uint8Array([...body, ...sig, ...info, ...marker]);
  assertEquals(stripModuleSignature(signed), body);
  assertEquals(stripModuleSignature(body), body);
  new DataView(info.buffer).setUint32(8, 1 << 20, false);
  const lying = new Uint8Array([...body, ...sig, ...info, ...marker]);
  assertThrows(() => stripModuleSignature(lying), BackendUnavailableError);
});
