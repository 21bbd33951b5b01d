/**
 * The runner's status file as an attacker writes it (DESIGN.md
 * "Containment": a guest that escapes libkrun's virtiofs owns the runner,
 * which can write its own sandbox directory and nothing of the database).
 * Each case plants a `status.json` in sandbox "a"'s directory and reads the
 * rows the way every reader does (`Sandbox.list` / `Sandbox.get`): a valid
 * one changes "a"'s row (the positive control); a huge one, bad JSON, an
 * unknown status, unknown fields, another sandbox's name, a link to a valid
 * file outside, a FIFO — each is refused with a typed StateError by the
 * parser, changes nothing while the runner lives, makes "a" `crashed`
 * (reason naming the file) once its lock is free, and never touches "b".
 * No VM.
 */

import { assert, assertEquals, assertMatch, assertThrows } from "../util/assert.ts";
import { inHome } from "../util/temp_home.ts";
import { StateError } from "../../src/errors.ts";
import { libcLibrary } from "../../ffi/libc.ts";
import { tryLock } from "../../src/store/lock.ts";
import { openStore } from "../../src/store/open.ts";
import { parseConfig } from "../../src/sandbox/config.ts";
import { pathsOf } from "../../src/sandbox/state.ts";
import { Sandbox } from "../../mod.ts";
import { parseRunnerStatus, readRunnerStatus, StatusFile } from "../../src/vmm/status_file.ts";

const valid = (name: string, status = "draining", stopReason: string | null = "forged") =>
  JSON.stringify({ name, status, stopReason, detached: true, bootMs: 1234 });

/** What each hostile file is: how it is planted at `path`. */
const HOSTILE: Record<string, (path: string, outside: string) => Promise<void>> = {
  huge: (p) => Deno.writeTextFile(p, valid("a") + " ".repeat(1 << 20)),
  "bad JSON": (p) => Deno.writeTextFile(p, '{"name":"a","status":'),
  "unknown status": (p) => Deno.writeTextFile(p, valid("a", "owned")),
  "an extra field": (p) =>
    Deno.writeTextFile(p, JSON.stringify({ ...JSON.parse(valid("a")), config: '{"volumes":[{"hostPath":"/"}]}' })),
  "another sandbox's name": (p) => Deno.writeTextFile(p, valid("b", "stopped")),
  "a link to a valid file outside": async (p, outside) => {
    await Deno.writeTextFile(outside, valid("a"));
    await Deno.symlink(outside, p);
  },
  "a FIFO": (p) => {
    const rc = libcLibrary.load()!.symbols.mkfifo(new TextEncoder().encode(`${p}\0`), 0o600);
    assertEquals(rc, 0);
    return Promise.resolve();
  },
  "not UTF-8": (p) => Deno.writeFile(p, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])),
};

Deno.test("runner status: the parser accepts what the runner writes and refuses anything else, typed", () => {
  const s = parseRunnerStatus(valid("a", "stopped", "stopped by request"), "a");
  assertEquals([s.status, s.stopReason, s.detached, s.bootMs], ["stopped", "stopped by request", true, 1234]);
  for (
    const bad of [
      valid("b"),
      valid("a", "owned"),
      "[]",
      "null",
      "{}",
      JSON.stringify({ ...JSON.parse(valid("a")), bootMs: -1 }),
      JSON.stringify({ ...JSON.parse(valid("a")), bootMs: "1" }),
      JSON.stringify({ ...JSON.parse(valid("a")), detached: 1 }),
      JSON.stringify({ ...JSON.parse(valid("a")), stopReason: "x".repeat(5000) }),
      JSON.stringify({ ...JSON.parse(valid("a")), extra: 1 }),
    ]
  ) {
    assertEquals(assertThrows(() => parseRunnerStatus(bad, "a"), StateError).code, "STATE", bad.slice(0, 80));
  }
});

Deno.test("runner status: what StatusFile writes reads back, and a long reason is cut to what the reader accepts", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = new StatusFile(`${dir}/status.json`, "a", false);
    file.update({ status: "crashed", stopReason: "boot failed: " + "x".repeat(10_000) });
    const back = readRunnerStatus(`${dir}/status.json`, "a")!;
    assertEquals(back.status, "crashed");
    assert(back.stopReason!.startsWith("boot failed: xxx") && back.stopReason!.length <= 2000);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["status.json"], "no temporary file left");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runner status: a hostile status.json changes nothing but its own row, and only to crashed once the runner is gone", async () => {
  await inHome(async (home) => {
    using store = await openStore();
    const config = (name: string) => JSON.stringify(parseConfig({ name, image: { kind: "dir", path: "/" } }));
    const outside = `${home}/outside-status.json`;
    const path = pathsOf("a").statusFile;
    for (const name of ["a", "b"]) await Deno.mkdir(pathsOf(name).dir, { recursive: true });
    store.insert("a", config("a"), "running", false);
    store.insert("b", config("b"), "running", false);
    // "b"'s runner lives (we hold its lock): its row must read running every time.
    using bLock = tryLock(pathsOf("b").runnerLock, true);
    assert(bLock);
    const reset = async () => {
      await Deno.remove(path).catch(() => {});
      await Deno.remove(outside).catch(() => {});
      store.update("a", { status: "running", stopReason: null, detached: false });
    };
    const rows = async () => Object.fromEntries((await Sandbox.list()).map((h) => [h.name, [h.status, h.stopReason]]));

    // Positive control: a valid report is merged into "a"'s row, and only there.
    {
      using aLock = tryLock(pathsOf("a").runnerLock, true);
      assert(aLock);
      await Deno.writeTextFile(path, valid("a"));
      assertEquals(await rows(), { a: ["draining", "forged"], b: ["running", null] });
      assertEquals(store.get("a")!.bootMs, 1234);
      assertEquals(store.get("a")!.detached, true);
    }
    await reset();
    // And with the lock free, a terminal report is how it ended (not a crash).
    await Deno.writeTextFile(path, valid("a", "stopped", "stopped by request"));
    assertEquals((await Sandbox.get("a")).status, "stopped");
    assertEquals((await Sandbox.get("a")).stopReason, "stopped by request");

    for (const [what, plant] of Object.entries(HOSTILE)) {
      await reset();
      await plant(path, outside);
      assertEquals(
        assertThrows(() => readRunnerStatus(path, "a"), StateError).code,
        "STATE",
        `${what}: the reader refuses it typed`,
      );
      {
        // The runner alive: nothing changes.
        using aLock = tryLock(pathsOf("a").runnerLock, true);
        assert(aLock);
        assertEquals(await rows(), { a: ["running", null], b: ["running", null] }, what);
      }
      // The runner gone: crashed, the reason naming the status file; "b" untouched.
      const got = await rows();
      assertEquals(got.b, ["running", null], what);
      assertEquals(got.a[0], "crashed", what);
      assertMatch(String(got.a[1]), /status\.json|status file/, what);
      if (what.startsWith("a link")) {
        assertEquals(await Deno.readTextFile(outside), valid("a"), "the target is untouched");
      }
    }
    assertEquals(store.get("b")!.status, "running");
    assertEquals(store.get("b")!.detached, false);
  });
});
