/**
 * libc through the one loader (ffi/load.ts): it loads, its calls answer with
 * errnos as documented, and a path with a NUL byte never reaches C cut short.
 */

import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import { errnoName, libcLibrary, loadLibc, LOCK } from "../../ffi/libc.ts";

const EWOULDBLOCK = 11;

Deno.test("libc loads through the shared loader and flock answers with errnos", async () => {
  const libc = loadLibc();
  assert(libc, libcLibrary.errors().join("; "));
  assertEquals(libcLibrary.path, "libc.so.6");
  assertEquals(loadLibc(), libc); // opened once
  const dir = await Deno.makeTempDir();
  try {
    const a = libc.openForLock(`${dir}/l`, 0o600);
    const b = libc.openForLock(`${dir}/l`, 0o600);
    assert(a >= 0 && b >= 0, `${a} ${b}`);
    assertEquals(libc.flock(a, LOCK.ex | LOCK.nb), 0);
    assertEquals(libc.flock(b, LOCK.ex | LOCK.nb), EWOULDBLOCK); // held through the other descriptor
    assertEquals(libc.flock(a, LOCK.un), 0);
    assertEquals(libc.flock(b, LOCK.ex | LOCK.nb), 0); // positive control: free again
    libc.close(a);
    libc.close(b);
    assertEquals(-libc.openForLock(`${dir}/missing/l`, 0o600), 2);
    assertEquals(errnoName(2), "ENOENT");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a path with a NUL byte is refused before it reaches libc", async () => {
  const libc = loadLibc()!;
  const dir = await Deno.makeTempDir();
  try {
    assertThrows(() => libc.openForLock(`${dir}/l\0ignored`, 0o600), TypeError);
    // C would have opened `${dir}/l`: nothing was created.
    assertEquals([...Deno.readDirSync(dir)], []);
    assertThrows(() => libc.getXattr(`${dir}\0`, "user.k"), TypeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
