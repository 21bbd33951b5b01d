/**
 * libc through the one loader (ffi/load.ts): it loads, its calls answer with
 * errnos as documented, and a path with a NUL byte never reaches C cut short.
 */

import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import { AT_FDCWD, errnoName, libcLibrary, loadLibc, LOCK, O, S_IF, S_IFMT } from "../../ffi/libc.ts";

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

Deno.test("openat walkers: O_NOFOLLOW refuses a symlinked component, O_EXCL an existing file", async () => {
  const libc = loadLibc()!;
  const dir = await Deno.makeTempDir();
  const outside = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/real`);
    await Deno.symlink(outside, `${dir}/link`);
    const root = libc.openAt(AT_FDCWD, dir, O.rdonly | O.directory);
    assert(root >= 0, `${-root}`);
    // A real directory opens; a symlink to one does not, as a directory or a file.
    const real = libc.openAt(root, "real", O.rdonly | O.directory | O.nofollow);
    assert(real >= 0, errnoName(-real));
    assertEquals(errnoName(-libc.openAt(root, "link", O.rdonly | O.directory | O.nofollow)), "ENOTDIR");
    assertEquals(errnoName(-libc.openAt(root, "link", O.rdonly | O.nofollow)), "ELOOP");
    // Positive control: without O_NOFOLLOW the same name leads outside.
    const followed = libc.openAt(root, "link", O.rdonly | O.directory);
    assert(followed >= 0);
    const out = libc.fstat(followed);
    const want = await Deno.stat(outside);
    assert(out.errno === 0 && "ino" in out && out.ino === BigInt(want.ino!), "the followed link is the outside dir");
    libc.close(followed);
    // O_EXCL|O_NOFOLLOW: a new file is created, an existing one or a symlink refused (nothing written through).
    const fd = libc.openAt(real, "f", O.wronly | O.creat | O.excl | O.nofollow, 0o600);
    assert(fd >= 0, errnoName(-fd));
    assertEquals(await libc.writeAll(fd, new TextEncoder().encode("hello")), 0);
    assertEquals(libc.fchmod(fd, 0o640), 0);
    const st = libc.fstat(fd);
    assert(st.errno === 0 && "mode" in st);
    assertEquals(st.mode & S_IFMT, S_IF.reg);
    assertEquals(st.mode & 0o7777, 0o640);
    assertEquals(st.size, 5);
    libc.close(fd);
    assertEquals(await Deno.readTextFile(`${dir}/real/f`), "hello");
    assertEquals(errnoName(-libc.openAt(real, "f", O.wronly | O.creat | O.excl | O.nofollow, 0o600)), "EEXIST");
    assertEquals(libc.symlinkAt(`${outside}/planted`, real, "l"), 0);
    assertEquals(errnoName(-libc.openAt(real, "l", O.wronly | O.creat | O.excl | O.nofollow, 0o600)), "EEXIST");
    assertEquals([...Deno.readDirSync(outside)], [], "nothing was created through the link");
    assertEquals(libc.readlinkAt(real, "l"), { value: `${outside}/planted`, errno: 0 });
    assertEquals(errnoName(libc.readlinkAt(real, "f").errno), "EINVAL");
    // fstatAt does not follow a final link unless asked; read reads through the descriptor.
    const lst = libc.fstatAt(root, "link");
    assert(lst.errno === 0 && "mode" in lst && (lst.mode & S_IFMT) === S_IF.lnk);
    const fst = libc.fstatAt(root, "link", true);
    assert(fst.errno === 0 && "mode" in fst && (fst.mode & S_IFMT) === S_IF.dir);
    const rfd = libc.openAt(real, "f", O.rdonly | O.nofollow);
    const buf = new Uint8Array(16);
    assertEquals(await libc.read(rfd, buf), 5);
    assertEquals(await libc.read(rfd, buf), 0);
    libc.close(rfd);
    // mkdirat refuses a taken name (a link is not followed); unlinkat removes names, dirs with the flag.
    assertEquals(errnoName(libc.mkdirAt(root, "link", 0o700)), "EEXIST");
    assertEquals(libc.mkdirAt(real, "sub", 0o700), 0);
    assertEquals(errnoName(libc.unlinkAt(real, "sub")), "EISDIR");
    assertEquals(libc.unlinkAt(real, "sub", true), 0);
    assertEquals(libc.unlinkAt(real, "l"), 0);
    assertEquals(errnoName(libc.fstatAt(real, "l").errno), "ENOENT");
    assertThrows(() => libc.openAt(root, "real\0/x", O.rdonly), TypeError);
    libc.close(real);
    libc.close(root);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
});
