/**
 * The warm pool's bookkeeping without a VM: internal names are disjoint from
 * user names and hidden from `Sandbox.list`, a handed-out name's directory
 * link is removed with the pooled directory it points at, and pool options
 * are checked.
 */

import { assert, assertEquals, assertRejects, assertThrows } from "../util/assert.ts";
import { inHome } from "../util/temp_home.ts";
import { InvalidConfigError, StateError } from "../../src/errors.ts";
import { openStore } from "../../src/store/open.ts";
import { isPoolName, parseConfig, validateName } from "../../src/sandbox/config.ts";
import { deleteState, linkPooledDir, pathsOf, withNameLock } from "../../src/sandbox/state.ts";
import { Sandbox } from "../../mod.ts";

const pooled = ".pool-0123456789abcdef";
const exists = (p: string) => Deno.lstat(p).then(() => true, () => false);

Deno.test("pool names: never a user's name, accepted by parseConfig, hidden from list", async () => {
  assert(isPoolName(pooled) && !isPoolName("pool-0123456789abcdef") && !isPoolName(".pool-x"));
  assertThrows(() => validateName(pooled), InvalidConfigError);
  assertThrows(() => Sandbox.builder(pooled), InvalidConfigError);
  assertEquals(parseConfig({ name: pooled, image: { kind: "dir", path: "/" } }).name, pooled);
  await inHome(async () => {
    using store = await openStore();
    store.insert(pooled, "{}", "stopped", false);
    store.insert(
      "job-1",
      JSON.stringify(parseConfig({ name: "job-1", image: { kind: "dir", path: "/" } })),
      "stopped",
      false,
    );
    assertEquals((await Sandbox.list()).map((h) => h.name), ["job-1"]);
  });
});

Deno.test("pool state: a handed-out name links to the pooled directory; deleting it removes both", async () => {
  await inHome(async () => {
    await Deno.mkdir(pathsOf(pooled).dir, { recursive: true });
    await Deno.writeTextFile(pathsOf(pooled).runnerLog, "pooled\n");
    await withNameLock("job-1", () => linkPooledDir("job-1", pooled));
    // Paths derived from the new name reach the pooled files.
    assertEquals(await Deno.readTextFile(pathsOf("job-1").runnerLog), "pooled\n");
    using store = await openStore();
    store.insert("job-1", "{}", "stopped", false);
    await withNameLock("job-1", () => deleteState(store, "job-1"));
    assertEquals([await exists(pathsOf("job-1").dir), await exists(pathsOf(pooled).dir)], [false, false]);
    assertEquals(store.get("job-1"), undefined);
    // Only a pooled sibling is ever linked.
    await assertRejects(() => linkPooledDir("job-2", "job-1"), StateError);
  });
});

Deno.test("pool options: size, refill delay and secrets are checked before anything boots", () => {
  assertThrows(() => Sandbox.pool({ image: "/srv/root", size: 0 }), InvalidConfigError);
  assertThrows(() => Sandbox.pool({ image: "/srv/root", size: 1000 }), InvalidConfigError);
  assertThrows(() => Sandbox.pool({ image: "/srv/root", size: 1, refillDelayMs: -1 }), InvalidConfigError);
  assertThrows(
    () => Sandbox.pool({ image: "/srv/root", size: 1, shape: (b) => b.secretEnv("K", "v", "api.example.com") }),
    InvalidConfigError,
  );
});
