import { assert, assertEquals } from "../util/assert.ts";
import { decodeName, encodeName } from "../../src/image/names.ts";

Deno.test("names: any bytes decode to a string that encodes back to exactly those bytes", () => {
  let seed = 7;
  const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  const pool = [0x61, 0x2e, 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xed, 0xa0, 0x80, 0xff, 0xe9, 0x80];
  for (let n = 0; n < 3000; n++) {
    const bytes = Uint8Array.from(
      { length: rand() % 24 },
      () => rand() % 3 ? pool[rand() % pool.length] : rand() % 256,
    );
    assertEquals(encodeName(decodeName(bytes)), bytes, `bytes ${[...bytes].map((b) => b.toString(16))}`);
  }
});

Deno.test("names: valid UTF-8 decodes as usual; invalid bytes stay distinct", () => {
  const utf8 = new TextEncoder().encode("café/😀/日本");
  assertEquals(decodeName(utf8), "café/😀/日本");
  assertEquals(encodeName("café/😀/日本"), utf8);
  const latin1a = decodeName(new Uint8Array([0x63, 0x61, 0x66, 0xe8]));
  const latin1b = decodeName(new Uint8Array([0x63, 0x61, 0x66, 0xe9]));
  assert(latin1a !== latin1b);
  assertEquals(latin1b, "caf\udce9");
  // A surrogate encoded in UTF-8 (CESU-style) is not valid UTF-8: its bytes are kept one by one.
  assertEquals(encodeName(decodeName(new Uint8Array([0xed, 0xa0, 0x80]))), new Uint8Array([0xed, 0xa0, 0x80]));
});

Deno.test("names: a U+FEFF in a name is a character like any other, not a byte-order mark", () => {
  for (
    const bytes of [[0xef, 0xbb, 0xbf, 0x61], [0xef, 0xbb, 0xbf], [0xff, 0xef, 0xbb, 0xbf, 0x61], [
      0x61,
      0xef,
      0xbb,
      0xbf,
    ]]
  ) {
    assertEquals(encodeName(decodeName(new Uint8Array(bytes))), new Uint8Array(bytes));
  }
  assert(decodeName(new Uint8Array([0xef, 0xbb, 0xbf, 0x61])) !== "a");
});
