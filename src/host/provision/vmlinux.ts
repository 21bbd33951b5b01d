/**
 * The guest kernel as qemu boots it fastest: the uncompressed ELF inside a
 * bzImage, entered at its PVH note. Given an ELF kernel with a PVH entry
 * (`XEN_ELFNOTE_PHYS32_ENTRY`), qemu loads its segments and jumps straight
 * into the kernel, so the guest skips the bzImage's self-decompression and
 * relocation: under TCG that was about 0.5–1 s of every cold boot (and of
 * every template build). The price is disk (the ELF is about 4× the
 * bzImage) and the decompressor's KASLR, which a sandbox guest (root inside
 * anyway; restored templates share one layout regardless) does not need.
 *
 * @module
 */

import { BackendUnavailableError } from "../../errors.ts";
import { runCommand } from "../../util/command.ts";

/** `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry point qemu's PVH loader looks for. */
const PVH_ENTRY_NOTE = 18;

/** Compressions a bzImage payload may use, by magic, that {@link extractVmlinux} can undo. */
export type PayloadFormat = "lz4" | "gzip";

/** Where a bzImage keeps its compressed kernel. */
export interface BzImagePayload {
  readonly format: PayloadFormat;
  /** The compressed bytes, without Linux's appended size for lz4. */
  readonly bytes: Uint8Array<ArrayBuffer>;
  /** The uncompressed size the build appended (lz4), to check the output. */
  readonly size?: number;
}

function bad(what: string, cause?: unknown): BackendUnavailableError {
  return new BackendUnavailableError(
    "qemu",
    `a guest kernel qemu can boot directly (${what})`,
    "the Debian kernel package changed format or is damaged: run setup again, or pin the previous package",
    cause === undefined ? undefined : { cause },
  );
}

/**
 * The compressed kernel inside a bzImage, from its setup header (boot
 * protocol 2.08+: `payload_offset` and `payload_length`).
 *
 * @example
 * ```ts
 * import { bzImagePayload } from "./vmlinux.ts";
 * try {
 *   bzImagePayload(new Uint8Array(1024));
 * } catch (e) {
 *   console.log((e as Error).message.includes("no bzImage header")); // true
 * }
 * ```
 */
export function bzImagePayload(image: Uint8Array<ArrayBuffer>): BzImagePayload {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.length < 0x250 || view.getUint32(0x202, true) !== 0x53726448 /* "HdrS" */) {
    throw bad("no bzImage header");
  }
  if (view.getUint16(0x206, true) < 0x208) throw bad("boot protocol older than 2.08, no payload fields");
  const setupSects = image[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + view.getUint32(0x248, true);
  const length = view.getUint32(0x24c, true);
  if (length < 8 || start + length > image.length) throw bad("payload outside the file");
  const bytes = image.subarray(start, start + length);
  const magic = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, false);
  if (magic === 0x02214c18) {
    // Linux appends the uncompressed size (le32) after lz4's legacy frames.
    const size = new DataView(bytes.buffer, bytes.byteOffset + length - 4, 4).getUint32(0, true);
    return { format: "lz4", bytes: bytes.subarray(0, length - 4), size };
  }
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) return { format: "gzip", bytes };
  throw bad(`payload compressed as magic 0x${magic.toString(16).padStart(8, "0")}, not lz4 or gzip`);
}

/**
 * Whether an ELF64 image has a PVH entry note (the one qemu boots an ELF
 * kernel by).
 *
 * @example
 * ```ts
 * import { hasPvhEntry } from "./vmlinux.ts";
 * console.log(hasPvhEntry(new TextEncoder().encode("not an elf"))); // false
 * ```
 */
export function hasPvhEntry(elf: Uint8Array): boolean {
  if (elf.length < 64 || elf[0] !== 0x7f || elf[1] !== 0x45 || elf[2] !== 0x4c || elf[3] !== 0x46) return false;
  if (elf[4] !== 2 || elf[5] !== 1) return false; // ELFCLASS64, little-endian
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const phoff = Number(view.getBigUint64(0x20, true));
  const phentsize = view.getUint16(0x36, true);
  const phnum = view.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > elf.length) return false;
    if (view.getUint32(ph, true) !== 4 /* PT_NOTE */) continue;
    const offset = Number(view.getBigUint64(ph + 8, true));
    const end = Math.min(offset + Number(view.getBigUint64(ph + 32, true)), elf.length);
    for (let n = offset; n + 12 <= end;) {
      const namesz = view.getUint32(n, true);
      const descsz = view.getUint32(n + 4, true);
      const type = view.getUint32(n + 8, true);
      const name = new TextDecoder().decode(elf.subarray(n + 12, n + 12 + namesz)).replace(/\0+$/, "");
      if (name === "Xen" && type === PVH_ENTRY_NOTE && descsz >= 4) return true;
      // Sizes are the file's word: a huge one moves past the end and ends the walk (align4 never wraps to negative).
      n += 12 + align4(namesz) + align4(descsz);
    }
  }
  return false;
}

function align4(n: number): number {
  return n + (4 - n % 4) % 4;
}

/**
 * Writes the uncompressed ELF kernel of the bzImage at `bzImage` to `out`,
 * checked to have a PVH entry. lz4 payloads go through Debian's `lz4`.
 *
 * @example
 * ```ts ignore
 * import { extractVmlinux } from "./vmlinux.ts";
 * await extractVmlinux("/boot/vmlinuz-6.1.0-57-cloud-amd64", "/tmp/vmlinux");
 * ```
 */
export async function extractVmlinux(bzImage: string, out: string): Promise<void> {
  const payload = bzImagePayload(await Deno.readFile(bzImage));
  try {
    await unpack(payload, out);
  } catch (e) {
    throw bad(`its ${payload.format} payload did not unpack: ${(e as Error).message}`, e);
  }
  const elf = await Deno.readFile(out);
  if (payload.size !== undefined && elf.length !== payload.size) {
    throw bad(`the payload unpacked to ${elf.length} bytes, its header says ${payload.size}`);
  }
  if (!hasPvhEntry(elf)) throw bad("the unpacked kernel is not an ELF with a PVH entry note");
}

async function unpack(payload: BzImagePayload, out: string): Promise<void> {
  if (payload.format === "gzip") {
    await Deno.writeFile(out, new Blob([payload.bytes]).stream().pipeThrough(new DecompressionStream("gzip")));
    return;
  }
  // The payload goes in on stdin ("-" is stdin), the ELF straight to `out`: no temporary copy.
  await runCommand("lz4", ["-d", "-f", "-q", "-", out], { stdin: payload.bytes });
}
