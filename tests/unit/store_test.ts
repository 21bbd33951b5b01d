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

/**
 * Runs a TS snippet in a child deno under `umask`; `whileOpen` runs when the child prints "ready" (it then
 * waits for its stdin to close, so what it holds open is still open), and the child's success is awaited.
 */
async function underUmask(
  umask: string,
  script: string,
  env: Record<string, string> = {},
  whileOpen: () => Promise<void> = () => Promise.resolve(),
): Promise<void> {
  const cmd = `umask ${umask}; exec "$0" eval --ext=ts "$1"`;
  const tail = `\nconsole.log("ready"); for await (const _ of Deno.stdin.readable) { /* until closed */ }`;
  const child = new Deno.Command("sh", {
    args: ["-c", cmd, Deno.execPath(), script + tail],
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let seen = "";
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    seen += chunk;
    if (seen.includes("ready")) break;
  }
  const checked = seen.includes("ready") ? whileOpen().then(() => undefined, (e: Error) => e) : undefined;
  const failure = await checked;
  await child.stdin.close();
  const status = await child.status;
  if (!status.success || !seen.includes("ready")) throw new Error(`child failed: ${await stderr}`);
  if (failure) throw failure;
}

const src = (p: string) => JSON.stringify(new URL(`../../src/${p}`, import.meta.url).href);
const perm = async (p: string) => (await Deno.lstat(p)).mode! & 0o777;

for (const umask of ["000", "002"]) {
  Deno.test(`store: under umask ${umask} a new home is 0700 with 0600 database, wal, shm and lock files`, async () => {
    const home = `${await tmp()}/home`;
    await underUmask(
      umask,
      `
      import { openStore } from ${src("store/open.ts")};
      import { tryLock } from ${src("store/lock.ts")};
      import { privateDir } from ${src("store/private.ts")};
      using store = await openStore();
      store.insert("a", "{}", "stopped", false);
      tryLock(${JSON.stringify(`${home}/sandboxes/a.lock`)}, true)?.release();
      await privateDir(${JSON.stringify(`${home}/sandboxes/a/net`)});
      // positive controls: what the umask alone makes
      await Deno.writeTextFile(${JSON.stringify(`${home}/control.txt`)}, "x");
      await Deno.mkdir(${JSON.stringify(`${home}/control-dir`)});
      `,
      { KRUNBOX_HOME: home },
      async () => {
        const loose = umask === "000" ? [0o666, 0o777] : [0o664, 0o775];
        assertEquals([await perm(`${home}/control.txt`), await perm(`${home}/control-dir`)], loose);
        for (
          const d of [home, `${home}/sandboxes`, `${home}/cache`, `${home}/sandboxes/a`, `${home}/sandboxes/a/net`]
        ) {
          assertEquals((await perm(d)).toString(8), "700", d);
        }
        for (const f of ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "sandboxes/a.lock"]) {
          assertEquals((await perm(`${home}/${f}`)).toString(8), "600", f);
        }
      },
    );
  });
}

Deno.test("store: an existing home made 0755/0644 by hand is tightened at open; guest trees and links are left alone", async () => {
  const outside = await tmp();
  await Deno.chmod(outside, 0o755);
  const home = await tmp();
  const dirs = [
    "sandboxes",
    "sandboxes/a",
    "sandboxes/a/net",
    "cache",
    "cache/images",
    "volumes/v/sub",
    "cache/roots/r/etc",
  ];
  for (const d of dirs) await Deno.mkdir(`${home}/${d}`, { recursive: true });
  const files = ["sandboxes/a/vm.json", "sandboxes/a/console.log", "sandboxes/a.lock", "cache/images/x.erofs"];
  for (const f of [...files, "volumes/v/sub/data.txt", "cache/roots/r/etc/passwd"]) {
    await Deno.writeTextFile(`${home}/${f}`, "x");
  }
  await Deno.writeTextFile(`${home}/sandboxes/a/tool`, "x");
  await Deno.symlink(outside, `${home}/assets`);
  for (const d of ["", ...dirs]) await Deno.chmod(`${home}/${d}`, 0o755);
  for (const f of [...files, "volumes/v/sub/data.txt", "cache/roots/r/etc/passwd"]) {
    await Deno.chmod(`${home}/${f}`, 0o644);
  }
  await Deno.chmod(`${home}/sandboxes/a/tool`, 0o755);
  {
    using store = Store.open(`${home}/db.sqlite`);
    store.insert("a", "{}", "stopped", false);
  }
  for (const f of ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm"]) {
    await Deno.chmod(`${home}/${f}`, 0o644).catch(() => {});
  }
  const { looseEntries } = await import("../../src/store/private.ts");
  assert(
    (await looseEntries(home)).some((t) => t.path === `${home}/db.sqlite` && t.from === 0o644),
    "the doctor's walk sees it",
  );
  await underUmask("022", `import { openStore } from ${src("store/open.ts")}; using s = await openStore();`, {
    KRUNBOX_HOME: home,
  });
  for (
    const d of ["", "sandboxes", "sandboxes/a", "sandboxes/a/net", "cache", "cache/images", "volumes", "cache/roots"]
  ) {
    assertEquals((await perm(`${home}/${d}`)).toString(8), "700", d || "home");
  }
  for (const f of [...files, "db.sqlite"]) assertEquals((await perm(`${home}/${f}`)).toString(8), "600", f);
  assertEquals((await perm(`${home}/sandboxes/a/tool`)).toString(8), "700", "the owner's exec bit stays");
  // guest data keeps its modes, a link's target is not touched
  assertEquals((await perm(`${home}/volumes/v/sub/data.txt`)).toString(8), "644");
  assertEquals((await perm(`${home}/cache/roots/r/etc/passwd`)).toString(8), "644");
  assertEquals((await perm(outside)).toString(8), "755");
  assertEquals(
    await looseEntries(home).then((l) => l.filter((t) => !t.path.includes("/volumes/") && !t.path.includes("/roots/"))),
    [],
  );
});

Deno.test("store: rename moves a row with a new config in one statement; a taken or missing name is false", async () => {
  const dir = await tmp();
  using store = Store.open(`${dir}/db.sqlite`);
  store.insert(".pool-00000000000000aa", '{"name":".pool-00000000000000aa"}', "running", false);
  store.insert("taken", "{}", "stopped", false);
  assertEquals(store.rename(".pool-00000000000000aa", "taken", "{}"), false);
  assertEquals(store.rename("missing", "free", "{}"), false);
  assert(store.rename(".pool-00000000000000aa", "job-1", '{"name":"job-1"}'));
  assertEquals(store.get(".pool-00000000000000aa"), undefined);
  const row = store.get("job-1")!;
  assertEquals([row.config, row.status], ['{"name":"job-1"}', "running"]);
});
