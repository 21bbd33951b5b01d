/**
 * The host's file access in a runner-writable directory
 * (src/util/nofollow.ts) against what a hostile runner leaves there: links
 * to canary files outside, a FIFO, a hard link, a directory swapped for a
 * link. Every negative check has its positive control (the same call on a
 * plain name lands). No VM.
 */

import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import { StateError } from "../../src/errors.ts";
import { libcLibrary } from "../../ffi/libc.ts";
import { createFresh, ensureFile, readBounded, readSlice } from "../../src/util/nofollow.ts";
import { tightenHome, touchPrivate, writePrivate } from "../../src/store/private.ts";
import { logTail } from "../../src/util/logs.ts";

async function inDir(fn: (dir: string, outside: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-nofollow-" });
  const outside = await Deno.makeTempDir({ prefix: "krunbox-outside-" });
  try {
    await fn(dir, outside);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
}

function mkfifo(path: string): void {
  assertEquals(libcLibrary.load()!.symbols.mkfifo(new TextEncoder().encode(`${path}\0`), 0o600), 0);
}

const mode = (p: string) => Deno.lstatSync(p).mode! & 0o7777;

Deno.test("nofollow: writePrivate over a planted link replaces the link; the canary outside is unchanged", async () => {
  await inDir(async (dir, outside) => {
    const canary = `${outside}/cron-x`;
    await Deno.writeTextFile(canary, "canary");
    await Deno.chmod(canary, 0o644);
    // Positive control: a plain name gets the write, 0600.
    await writePrivate(`${dir}/plain.json`, "{}");
    assertEquals([await Deno.readTextFile(`${dir}/plain.json`), mode(`${dir}/plain.json`)], ["{}", 0o600]);
    await Deno.symlink(canary, `${dir}/vm.json`);
    await writePrivate(`${dir}/vm.json`, '{"spec":1}');
    assertEquals(await Deno.readTextFile(canary), "canary");
    assertEquals(mode(canary), 0o644);
    assert(Deno.lstatSync(`${dir}/vm.json`).isFile);
    assertEquals(await Deno.readTextFile(`${dir}/vm.json`), '{"spec":1}');
    // A FIFO there is replaced too (it would block an open for writing).
    mkfifo(`${dir}/seccomp.bpf`);
    await createFresh(`${dir}/seccomp.bpf`, new Uint8Array([1, 2]));
    assertEquals(await Deno.readFile(`${dir}/seccomp.bpf`), new Uint8Array([1, 2]));
  });
});

Deno.test("nofollow: touchPrivate keeps a log's content, replaces a link, a FIFO or a hard link to it", async () => {
  await inDir(async (dir, outside) => {
    const canary = `${outside}/passwd`;
    await Deno.writeTextFile(canary, "canary");
    await Deno.chmod(canary, 0o644);
    await Deno.writeTextFile(`${dir}/runner.log`, "history\n", { mode: 0o644 });
    await touchPrivate(`${dir}/runner.log`);
    assertEquals([await Deno.readTextFile(`${dir}/runner.log`), mode(`${dir}/runner.log`)], ["history\n", 0o600]);
    await Deno.symlink(canary, `${dir}/console.log`);
    await touchPrivate(`${dir}/console.log`);
    mkfifo(`${dir}/fifo.log`);
    await touchPrivate(`${dir}/fifo.log`);
    await Deno.link(`${dir}/runner.log`, `${dir}/hard.log`);
    await ensureFile(`${dir}/hard.log`);
    for (const f of ["console.log", "fifo.log", "hard.log"]) {
      const st = Deno.lstatSync(`${dir}/${f}`);
      assert(st.isFile && st.size === 0 && st.nlink === 1, f);
    }
    assertEquals(await Deno.readTextFile(canary), "canary");
    assertEquals(mode(canary), 0o644);
    assertEquals(await Deno.readTextFile(`${dir}/runner.log`), "history\n");
  });
});

Deno.test("nofollow: reads refuse a link and a FIFO (without blocking), and are bounded", async () => {
  await inDir(async (dir, outside) => {
    await Deno.writeTextFile(`${outside}/secret`, "secret\n");
    await Deno.writeTextFile(`${dir}/plain.log`, "a\nb\nc\n");
    // Positive controls.
    assertEquals(await logTail(`${dir}/plain.log`, 2), "b\nc");
    assertEquals(new TextDecoder().decode(readBounded(`${dir}/plain.log`, 100)), "a\nb\nc\n");
    assertEquals(readSlice(`${dir}/plain.log`, "end", 2)!.bytes, new TextEncoder().encode("c\n"));
    assertEquals(readBounded(`${dir}/missing`, 10), undefined);
    await Deno.symlink(`${outside}/secret`, `${dir}/console.log`);
    assertEquals(await logTail(`${dir}/console.log`), "");
    assertThrows(() => readBounded(`${dir}/console.log`, 100), StateError);
    mkfifo(`${dir}/fifo`);
    assertThrows(() => readBounded(`${dir}/fifo`, 100), StateError);
    assertEquals(await logTail(`${dir}/fifo`), "");
    assertThrows(() => readBounded(`${dir}/plain.log`, 3), StateError);
  });
});

Deno.test("nofollow: tightenHome tightens a loose file, never a link's target, nor a tree behind a linked directory", async () => {
  await inDir(async (home, outside) => {
    const sandbox = `${home}/sandboxes/a`;
    await Deno.mkdir(`${sandbox}/net`, { recursive: true });
    await Deno.writeTextFile(`${outside}/passwd`, "x");
    await Deno.chmod(`${outside}/passwd`, 0o644);
    await Deno.writeTextFile(`${sandbox}/loose`, "x");
    await Deno.chmod(`${sandbox}/loose`, 0o644);
    await Deno.symlink(`${outside}/passwd`, `${sandbox}/linked`);
    await Deno.writeTextFile(`${outside}/inner`, "x");
    await Deno.chmod(`${outside}/inner`, 0o644);
    await Deno.symlink(outside, `${sandbox}/netlink`);
    await tightenHome(home);
    assertEquals(mode(`${sandbox}/loose`), 0o600, "positive control: a loose file is tightened");
    assertEquals(mode(`${outside}/passwd`), 0o644, "a link's target is not");
    assertEquals(mode(`${outside}/inner`), 0o644, "nor a file behind a linked directory");
  });
});
