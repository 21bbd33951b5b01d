/**
 * The sandbox lifecycle without a VM: reconciling a stored status with the
 * runner's lock, remove refusing a live sandbox, and the boot path's failures
 * before a runner starts (create leaves no trace, start leaves the row as it
 * was). Each runs in its own state home.
 */

import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { inHome } from "../util/temp_home.ts";
import { InvalidConfigError, NotFoundError, StateError, StillRunningError } from "../../src/errors.ts";
import { tryLock } from "../../src/store/lock.ts";
import { openStore } from "../../src/store/open.ts";
import { parseConfig } from "../../src/sandbox/config.ts";
import { createAndLaunch, relaunch } from "../../src/sandbox/launch.ts";
import { pathsOf, reconcile, removeSandbox, requireRow } from "../../src/sandbox/state.ts";
import { SandboxBuilder } from "../../src/sandbox/builder.ts";

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);
const configOf = (name: string, path: string) => parseConfig({ name, image: { kind: "dir", path } });

Deno.test("state: a live row whose runner lock is free reads as crashed; a held lock keeps it running", async () => {
  await inHome(async () => {
    using store = await openStore();
    store.insert("held", JSON.stringify(configOf("held", "/")), "running", true);
    store.insert("gone", JSON.stringify(configOf("gone", "/")), "running", true);
    await Deno.mkdir(pathsOf("held").dir, { recursive: true });
    using lock = tryLock(pathsOf("held").runnerLock, true);
    assert(lock, "the test holds the runner lock");
    assertEquals(reconcile(store, requireRow(store, "held")), "running");
    assertEquals(reconcile(store, requireRow(store, "gone")), "crashed");
    assertEquals(requireRow(store, "gone").stopReason, "the runner disappeared without a clean stop");
    assertEquals(requireRow(store, "held").status, "running");
  });
});

Deno.test("state: remove refuses a live sandbox, deletes a stopped one, and names a missing one", async () => {
  await inHome(async () => {
    using store = await openStore();
    store.insert("live", "{}", "running", true);
    store.insert("done", "{}", "stopped", true);
    await Deno.mkdir(pathsOf("live").dir, { recursive: true });
    await Deno.mkdir(pathsOf("done").dir, { recursive: true });
    using lock = tryLock(pathsOf("live").runnerLock, true);
    assert(lock);
    await assertRejects(() => removeSandbox("live"), StillRunningError);
    assert(await exists(pathsOf("live").dir), "a refused remove keeps the directory");
    await removeSandbox("done");
    assertEquals([store.get("done"), await exists(pathsOf("done").dir)], [undefined, false]);
    await assertRejects(() => removeSandbox("never"), NotFoundError);
  });
});

Deno.test("launch: a create that fails before the runner leaves no row and no directory", async () => {
  await inHome(async () => {
    const e = await assertRejects(
      () => createAndLaunch(configOf("broken", "/nonexistent-root-dir"), true, false),
      InvalidConfigError,
    );
    assertEquals(e.field, "image");
    using store = await openStore();
    assertEquals([store.get("broken"), await exists(pathsOf("broken").dir)], [undefined, false]);
  });
});

Deno.test("launch: a start that fails before the runner leaves the stored sandbox as it was", async () => {
  await inHome(async () => {
    using store = await openStore();
    store.insert("kept", JSON.stringify(configOf("kept", "/nonexistent-root-dir")), "stopped", false);
    store.update("kept", { stopReason: "stopped by request" });
    await Deno.mkdir(pathsOf("kept").dir, { recursive: true });
    await assertRejects(() => relaunch("kept", false), InvalidConfigError);
    const row = requireRow(store, "kept");
    assertEquals([row.status, row.stopReason], ["stopped", "stopped by request"]);
    assert(await exists(pathsOf("kept").dir));
    await assertRejects(() => relaunch("missing", false), NotFoundError);
  });
});

Deno.test("builder: one made with `new SandboxBuilder` builds a config but refuses to create", async () => {
  const b = new SandboxBuilder("direct").image("/");
  assertEquals(b.build().name, "direct");
  await assertRejects(() => b.create(), StateError);
});
