/**
 * File names as bytes. Linux names are byte strings; tar archives carry
 * them as such, and not every image's names are UTF-8. Names are held as JS
 * strings the way Python's `surrogateescape` does it: valid UTF-8 decodes
 * as usual, and each byte that is not part of valid UTF-8 becomes the lone
 * surrogate U+DC80–U+DCFF, which {@link encodeName} turns back into that
 * byte. So two names that differ only in invalid bytes stay two names, and
 * the image gets the archive's exact bytes.
 *
 * @module
 */

// ignoreBOM: a leading U+FEFF is part of a name, not a byte-order mark to drop.
const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const enc = new TextEncoder();

/**
 * Decodes a name's bytes (see the module doc).
 *
 * @example
 * ```ts
 * import { decodeName, encodeName } from "./names.ts";
 * const name = decodeName(new Uint8Array([0x63, 0x61, 0x66, 0xe9])); // "caf" + U+DCE9
 * console.log(encodeName(name)); // Uint8Array [0x63, 0x61, 0x66, 0xe9]
 * ```
 */
export function decodeName(bytes: Uint8Array): string {
  try {
    return strict.decode(bytes);
  } catch {
    return decodeEscaping(bytes);
  }
}

/** Length of the valid UTF-8 sequence at `i`, or 0. */
function sequenceAt(b: Uint8Array, i: number): number {
  const c = b[i];
  const cont = (k: number) => i + k < b.length && (b[i + k] & 0xc0) === 0x80;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!cont(1) || !cont(2)) return 0;
    const c1 = b[i + 1];
    if (c === 0xe0 && c1 < 0xa0) return 0; // overlong
    if (c === 0xed && c1 >= 0xa0) return 0; // a surrogate
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    const c1 = b[i + 1];
    if (c === 0xf0 && c1 < 0x90) return 0; // overlong
    if (c === 0xf4 && c1 >= 0x90) return 0; // past U+10FFFF
    return 4;
  }
  return 0;
}

function decodeEscaping(b: Uint8Array): string {
  let out = "";
  for (let i = 0; i < b.length;) {
    const n = sequenceAt(b, i);
    if (n === 0) {
      out += String.fromCharCode(0xdc00 + b[i]);
      i++;
    } else {
      out += strict.decode(b.subarray(i, i + n));
      i += n;
    }
  }
  return out;
}

/**
 * The bytes of a name from {@link decodeName} (any other string encodes as
 * UTF-8).
 *
 * @example
 * ```ts
 * import { encodeName } from "./names.ts";
 * console.log(encodeName("usr").length); // 3
 * ```
 */
export function encodeName(name: string): Uint8Array {
  if (!/[\udc80-\udcff]/.test(name)) return enc.encode(name);
  const parts: number[] = [];
  for (let i = 0; i < name.length; i++) {
    const cp = name.codePointAt(i)!;
    if (cp >= 0xdc80 && cp <= 0xdcff) { // an escaped byte (a lone low surrogate)
      parts.push(cp - 0xdc00);
      continue;
    }
    if (cp > 0xffff) i++;
    parts.push(...enc.encode(String.fromCodePoint(cp)));
  }
  return new Uint8Array(parts);
}
