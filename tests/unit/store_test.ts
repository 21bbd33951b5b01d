import { assert, assertEquals, assertRejects, assertThrows } from "../util/assert.ts";
import { Store } from "../../src/store/db.ts";
import { openStore } from "../../src/store/open.ts";
import { isLocked, lockWait, tryLock } from "../../src/store/lock.ts";
import { StateError } from "../../src/errors.ts";
import { DatabaseSync } from "node:sqlite";

async function tmp(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "krunbox-store-" });
}

Deno.test("store: insert is exclusive by name, rows round-trip", async () => {
  const dir = await tmp();
  using store = Store.open(`${dir}/db.sqlite`);
  assert(store.insert("a", '{"x":1}', "creating", false));
  assertEquals(store.insert("a", "{}", "creating", true), false);
  store.update("a", { status: "running", bootMs: 12.5, detached: true });
  const row = store.get("a")!;
  assertEquals([row.name, row.config, row.status, row.bootMs, row.detached], ["a", '{"x":1}', "running", 12.5, true]);
  assert(row.updatedAt.getTime() >= row.createdAt.getTime());
  store.delete("a");
  assertEquals(store.get("a"), undefined);
});

Deno.test("store: a second connection in the same process sees the same data (WAL)", async () => {
  const dir = await tmp();
  using a = Store.open(`${dir}/db.sqlite`);
  using b = Store.open(`${dir}/db.sqlite`);
  a.insert("shared", "{}", "stopped", false);
  assertEquals(b.list().map((r) => r.name), ["shared"]);
});

Deno.test("store: a second process sees this one's rows, and this one sees its writes, while both hold it open", async () => {
  const dir = await tmp();
  using store = Store.open(`${dir}/db.sqlite`);
  store.insert("from-parent", "{}", "stopped", false);
  // A real second process: it lists what it sees, adds a row, and exits; this connection stays open throughout.
  const script = `
    import { Store } from ${JSON.stringify(new URL("../../src/store/db.ts", import.meta.url).href)};
    using s = Store.open(${JSON.stringify(`${dir}/db.sqlite`)});
    console.log(JSON.stringify(s.list().map((r) => r.name)));
    s.insert("from-child", "{}", "running", true);
    console.log(String(Deno.pid));
  `;
  const out = await new Deno.Command(Deno.execPath(), { args: ["eval", "--ext=ts", script], stderr: "piped" }).output();
  const [seen, pid] = new TextDecoder().decode(out.stdout).trim().split("\n");
  assert(out.success, new TextDecoder().decode(out.stderr));
  assert(Number(pid) !== Deno.pid, "it ran in another process");
  assertEquals(JSON.parse(seen), ["from-parent"]);
  const row = store.get("from-child");
  assertEquals([row?.status, row?.detached], ["running", true]);
});

Deno.test("store: a corrupt file is refused and left untouched", async () => {
  const dir = await tmp();
  const junk = new TextEncoder().encode("this is not a database, but someone's file".repeat(200));
  await Deno.writeFile(`${dir}/db.sqlite`, junk);
  assertThrows(() => Store.open(`${dir}/db.sqlite`), StateError);
  assertEquals(await Deno.readFile(`${dir}/db.sqlite`), junk);
});

Deno.test("store: another application's database is refused", async () => {
  const dir = await tmp();
  const db = new DatabaseSync(`${dir}/db.sqlite`);
  db.exec("CREATE TABLE theirs (x INTEGER); INSERT INTO theirs VALUES (1);");
  db.close();
  const e = assertThrows(() => Store.open(`${dir}/db.sqlite`), StateError);
  assert(e.message.includes("not a krunbox database"));
  const again = new DatabaseSync(`${dir}/db.sqlite`);
  assertEquals((again.prepare("SELECT x FROM theirs").get() as { x: number }).x, 1);
  again.close();
});

Deno.test("store: a read-only location is a StateError naming KRUNBOX_HOME", () => {
  const e = assertThrows(() => Store.open("/proc/krunbox/db.sqlite"), StateError);
  assert(e.message.includes("KRUNBOX_HOME"));
});

Deno.test("store: openStore makes the state home, and an unusable one is a StateError naming it and KRUNBOX_HOME", async () => {
  const saved = Deno.env.get("KRUNBOX_HOME");
  const dir = await tmp();
  try {
    Deno.env.set("KRUNBOX_HOME", `${dir}/home`);
    {
      using store = await openStore();
      assertEquals(store.list(), []);
    }
    assert((await Deno.stat(`${dir}/home/sandboxes`)).isDirectory);
    assert((await Deno.stat(`${dir}/home/db.sqlite`)).isFile);
    Deno.env.set("KRUNBOX_HOME", "/proc/krunbox-home");
    const e = await assertRejects(() => openStore(), StateError);
    assert(e.message.includes("/proc/krunbox-home") && e.message.includes("KRUNBOX_HOME"), e.message);
  } finally {
    if (saved === undefined) Deno.env.delete("KRUNBOX_HOME");
    else Deno.env.set("KRUNBOX_HOME", saved);
  }
});

Deno.test("locks: exclusive, visible to isLocked, released on release", async () => {
  const dir = await tmp();
  const path = `${dir}/x.lock`;
  assertEquals(isLocked(path), false);
  const a = tryLock(path, true)!;
  assert(a);
  assertEquals(tryLock(path, true), undefined);
  assertEquals(isLocked(path), true);
  a.release();
  assertEquals(isLocked(path), false);
  const b = await lockWait(path, 100);
  assert(b);
  b.release();
});

Deno.test("locks: held by a process, freed by the kernel when it is SIGKILLed", async () => {
  const dir = await tmp();
  const path = `${dir}/held.lock`;
  const code = `import { tryLock } from ${JSON.stringify(new URL("../../src/store/lock.ts", import.meta.url).href)};
    const l = tryLock(${JSON.stringify(path)}, true); console.log(l ? "held" : "no"); setInterval(() => l, 1000);`;
  const child = new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped" }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assertEquals((await reader.read()).value?.trim(), "held");
  assertEquals(isLocked(path), true);
  child.kill("SIGKILL");
  await child.status;
  reader.releaseLock();
  await child.stdout.cancel().catch(() => {});
  assertEquals(isLocked(path), false);
});
