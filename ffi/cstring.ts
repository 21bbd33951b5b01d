/**
 * C strings and NULL-terminated string arrays for FFI calls. libkrun copies
 * most arguments, but some it reads later (at `krun_start_enter`), so every
 * buffer is owned by a {@link CStrings} arena that the caller keeps alive for
 * as long as the library may read it (the runner keeps it for the VM's life).
 *
 * @module
 */

const encoder = new TextEncoder();

/**
 * A NUL-terminated UTF-8 copy of `s` for a call that reads it only while it
 * runs (libc); throws a TypeError on an embedded NUL, which C would silently
 * cut the string at. Strings a library keeps belong in a {@link CStrings}.
 *
 * @example
 * ```ts
 * import { cstr } from "./cstring.ts";
 * console.log(cstr("/tmp")); // Uint8Array(5) [47, 116, 109, 112, 0]
 * ```
 */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  if (s.includes("\0")) throw new TypeError(`C string contains a NUL byte: ${JSON.stringify(s)}`);
  return encoder.encode(s + "\0");
}

/**
 * An arena of C strings and pointer arrays that stay alive with it.
 *
 * @example
 * ```ts
 * import { CStrings } from "./cstring.ts";
 * const arena = new CStrings();
 * const path = arena.str("/tmp");
 * const argv = arena.array(["/init", "--flag"]);
 * console.log(path.length, argv.length); // 5 24 ("/tmp" and its NUL; three 8-byte pointers, the last null)
 * if (path.length !== 5 || argv.length !== 24) throw new Error("sizes");
 * ```
 */
export class CStrings {
  readonly #keep: Uint8Array[] = [];

  /** A NUL-terminated UTF-8 copy of `s`; throws on an embedded NUL. */
  str(s: string): Uint8Array<ArrayBuffer> {
    const bytes = cstr(s);
    this.#keep.push(bytes);
    return bytes;
  }

  /** A `const char *const[]`: pointers to C strings, then NULL. */
  array(items: readonly string[]): Uint8Array<ArrayBuffer> {
    const ptrs = new BigUint64Array(items.length + 1);
    items.forEach((s, i) => {
      ptrs[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.str(s))));
    });
    const bytes = new Uint8Array(ptrs.buffer);
    this.#keep.push(bytes);
    return bytes;
  }

  /** Raw bytes kept alive with the arena (e.g. an overlay file's content). */
  bytes(data: Uint8Array): Uint8Array<ArrayBuffer> {
    const copy = new Uint8Array(data);
    this.#keep.push(copy);
    return copy;
  }
}
