/**
 * A writer for the cpio "newc" format, the format of Linux initramfs archives
 * (provisioning writes the shared qemu initramfs with it; Linux also accepts
 * several archives concatenated, a later file replacing an earlier one).
 *
 * @module
 */

import { concatBytes } from "../util/bytes.ts";

/** One entry of an archive. */
export type CpioEntry =
  | { kind: "dir"; path: string; mode?: number }
  | { kind: "file"; path: string; data: Uint8Array; mode?: number }
  | { kind: "symlink"; path: string; target: string };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

function hex8(n: number): string {
  return n.toString(16).padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/**
 * Encodes entries as one newc archive, ending with the `TRAILER!!!` record.
 * Paths are relative (no leading slash), parents listed before children.
 *
 * @example
 * ```ts
 * import { encodeCpio } from "./cpio.ts";
 * const bytes = encodeCpio([
 *   { kind: "dir", path: "krunbox" },
 *   { kind: "file", path: "krunbox/boot.json", data: new TextEncoder().encode("{}") },
 * ]);
 * console.log(bytes.length);
 * ```
 */
export function encodeCpio(entries: readonly CpioEntry[]): Uint8Array {
  const enc = new TextEncoder();
  const chunks: Uint8Array[] = [];
  let ino = 1;
  const push = (path: string, mode: number, data: Uint8Array) => {
    const name = enc.encode(path + "\0");
    const header = "070701" + hex8(ino++) + hex8(mode) + hex8(0) + hex8(0) + hex8(1) + hex8(0) +
      hex8(data.length) + hex8(0) + hex8(0) + hex8(0) + hex8(0) + hex8(name.length) + hex8(0);
    chunks.push(enc.encode(header), name, new Uint8Array(pad4(110 + name.length)));
    chunks.push(data, new Uint8Array(pad4(data.length)));
  };
  for (const e of entries) {
    const path = e.path.replace(/^\/+/, "");
    if (e.kind === "dir") push(path, S_IFDIR | (e.mode ?? 0o755), new Uint8Array());
    else if (e.kind === "file") push(path, S_IFREG | (e.mode ?? 0o644), e.data);
    else push(path, S_IFLNK | 0o777, enc.encode(e.target));
  }
  push("TRAILER!!!", 0, new Uint8Array());
  return concatBytes(chunks);
}
