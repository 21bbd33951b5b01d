/**
 * Snapshot templates on real qemu VMs: the first sandbox of an OCI image and
 * shape builds a template (boot to agent-ready, QMP migration to a file), and
 * every later one is restored from it with its own copy of the upper disk.
 * Checked on the host where it can be: the runner's log names the template
 * each sandbox came from, the template's files stay as saved, the key
 * changes with the shape.
 */

import { AgentClient } from "../../src/agent/client.ts";
import { join } from "node:path";
import { leftovers, processesMentioning, sandboxDir, skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { LocalRegistry, missingRegistryTools, pushImage } from "../util/registry.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { need } from "../util/require.ts";
import { Sandbox } from "../../mod.ts";

const missingTools = need("registry", await missingRegistryTools(), "template tests");
const ignore = skipVmReason !== undefined || missingTools !== undefined;
const opts = { ignore, sanitizeResources: false, sanitizeOps: false };

let registry: LocalRegistry | undefined;
let ref = "";

async function image(): Promise<string> {
  if (ref) return ref;
  registry = await LocalRegistry.start();
  await pushImage(registry.host, "test/tpl:1", [await busyboxRoot()], {
    env: ["FROM_IMAGE=yes", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    cmd: ["sh"],
  });
  ref = `${registry.host}/test/tpl:1`;
  return ref;
}

Deno.test.afterAll(async () => {
  await registry?.[Symbol.asyncDispose]();
});

/** How the runner says the sandbox came up: the template key it was restored from, or `cold: <reason>`. */
async function startOf(name: string): Promise<string> {
  // The last boot's ready line.
  const log =
    (await Deno.readTextFile(join(sandboxDir(name), "runner.log"))).split("\n").filter((l) => l.includes(" ready: "))
      .at(-1) ?? "";
  const restored = log.match(/ready: restored from template ([0-9a-f]+)/);
  if (restored) return restored[1];
  const cold = log.match(/booted cold: (.*)$/);
  return cold ? `cold: ${cold[1]}` : "unknown";
}

function templates(): string[] {
  try {
    return [...Deno.readDirSync(join(testHome, "templates"))].filter((e) => e.isDirectory).map((e) => e.name).sort();
  } catch {
    return [];
  }
}

function assertNotEquals<T>(a: T, b: T, what: string): void {
  assert(a !== b, `${what}: both ${JSON.stringify(a)}`);
}

async function remove(...names: string[]) {
  for (const n of names) await Sandbox.remove(n).catch(() => {});
  for (const n of names) {
    const left = await leftovers(n);
    const what = left.map((p) => Deno.readTextFileSync(`/proc/${p}/cmdline`).replaceAll("\0", " ").slice(0, 200));
    assertEquals(what, [], n);
  }
}

Deno.test({ name: "a restored sandbox runs exec, fs and metrics like a cold one", ...opts }, async () => {
  const r = await image();
  // Positive control: the same image booted cold (templates off) behaves as the restored one must.
  Deno.env.set("KRUNBOX_TEMPLATES", "0");
  let cold: Sandbox;
  try {
    cold = await Sandbox.builder("tpl-cold").image(r).memory(256).disableNetwork().create();
  } finally {
    Deno.env.delete("KRUNBOX_TEMPLATES");
  }
  assertEquals(await startOf("tpl-cold"), "cold: templates are off (KRUNBOX_TEMPLATES=0)");
  const first = await Sandbox.builder("tpl-first").image(r).memory(256).disableNetwork().create();
  const key = await startOf("tpl-first");
  assert(/^[0-9a-f]{32}$/.test(key), `the first sandbox is restored from the template it built: ${key}`);
  assertEquals(templates(), [key]);
  const sb = await Sandbox.builder("tpl-a").image(r).memory(256).disableNetwork().env("MINE", "a").create();
  try {
    assertEquals(await startOf("tpl-a"), key, "the second sandbox is restored from the same template");
    for (const s of [cold, sb]) {
      const out = await s.shell("echo $FROM_IMAGE ${MINE:-none}; hostname; cat /etc/hostname; id -u");
      assertEquals(out.code, 0);
      await s.fs().write("/root/f.txt", "written");
      assertEquals(await s.fs().readText("/root/f.txt"), "written");
      const m = await s.metrics();
      assert(m.memoryBytes > 0 && m.memoryLimitBytes === 256 << 20, JSON.stringify(m));
      assert(m.hostRssBytes > 0 && m.uptimeMs > 0, JSON.stringify(m));
    }
    assertEquals((await cold.shell("echo $FROM_IMAGE ${MINE:-none}; hostname")).stdout, "yes none\ntpl-cold\n");
    // Its own hostname and env, not the template's.
    assertEquals(
      (await sb.shell("echo $FROM_IMAGE ${MINE:-none}; hostname; cat /etc/hostname")).stdout,
      "yes a\ntpl-a\ntpl-a\n",
    );
    // Its clock is the host's (the template's stood still while saved).
    const guestSecs = Number((await sb.exec("date", ["+%s"])).stdout.trim());
    assert(Math.abs(guestSecs - Date.now() / 1000) < 5, `guest clock ${guestSecs}`);
    // Its writes went to its own upper, which keeps them across a restart (booted from its own disk).
    await sb.stopAndWait();
    await using again = await Sandbox.start("tpl-a");
    assertEquals(await startOf("tpl-a"), "cold: a restart boots the sandbox's own disk");
    assertEquals(await again.fs().readText("/root/f.txt"), "written");
  } finally {
    await cold.stopAndWait().catch(() => {});
    await first.stopAndWait().catch(() => {});
    await sb[Symbol.asyncDispose]();
    await remove("tpl-cold", "tpl-first", "tpl-a");
  }
});

Deno.test(
  { name: "two siblings restored from one template share no files and no random numbers", ...opts },
  async () => {
    const r = await image();
    const b = await Sandbox.builder("tpl-b").image(r).memory(256).disableNetwork().create();
    const c = await Sandbox.builder("tpl-c").image(r).memory(256).disableNetwork().create();
    try {
      const key = await startOf("tpl-b");
      assert(/^[0-9a-f]{32}$/.test(key), key);
      assertEquals(await startOf("tpl-c"), key, "both restored from one template");
      // The first values each guest reads after its restore.
      const first =
        "cat /proc/sys/kernel/random/uuid; head -c 16 /dev/urandom | od -An -x; grep ' _text$' /proc/kallsyms";
      const [ob, oc] = await Promise.all([b.shell(first), c.shell(first)]);
      const [uuidB, bytesB, textB] = ob.stdout.split("\n");
      const [uuidC, bytesC, textC] = oc.stdout.split("\n");
      // Control: they are one saved machine. The kernel's KASLR base is drawn at boot (a cold boot draws
      // another), and both have the template's.
      assert(/^[0-9a-f]{16} T _text$/.test(textB), ob.stdout);
      assertEquals(textB, textC, "one saved boot: the same kernel base");
      assert(/^[0-9a-f-]{36}$/.test(uuidB) && bytesB.trim().length > 0, ob.stdout);
      // Without the restore's guest.configure (neither seed nor clock) these two were equal; the seed alone
      // makes them differ.
      assertNotEquals(uuidB, uuidC, "first uuid");
      assertNotEquals(bytesB, bytesC, "first getrandom bytes");

      // Writes stay in each sandbox's own upper: the sibling and the template never see them.
      const tplUpper = join(testHome, "templates", templates().find((t) => t === key) ?? "", "upper.ext4");
      const before = await Deno.stat(tplUpper);
      await b.fs().write("/etc/only-b", "b");
      await b.exec("sync");
      assertEquals(await b.fs().readText("/etc/only-b"), "b", "positive control: b sees its file");
      assertEquals((await c.exec("test", ["-e", "/etc/only-b"])).code, 1, "c does not see b's file");
      const after = await Deno.stat(tplUpper);
      assertEquals(after.mtime?.getTime(), before.mtime?.getTime(), "the template's upper is untouched");
      // And on the host: b's disk has the file's bytes, c's does not.
      assert(await diskHas(join(sandboxDir("tpl-b"), "upper.ext4"), "only-b"), "b's upper holds the name");
      assert(!(await diskHas(join(sandboxDir("tpl-c"), "upper.ext4"), "only-b")), "c's upper does not");

      // Memory too: both map the template's RAM file copy-on-write; what b writes to its RAM (a tmpfs file)
      // is b's alone, and the file keeps the saved bytes.
      const tplRam = join(testHome, "templates", key, "ram");
      const ramBefore = await sha256(tplRam);
      const marker = `ram-only-b-${crypto.randomUUID()}`;
      await b.fs().write("/tmp/ram-only-b", marker.repeat(4096));
      assertEquals((await b.exec("grep", ["-c", marker, "/tmp/ram-only-b"])).stdout, "1\n", "positive control");
      assertEquals((await c.exec("test", ["-e", "/tmp/ram-only-b"])).code, 1, "c does not see b's memory");
      assertEquals(await sha256(tplRam), ramBefore, "the template's RAM file is untouched");
      assert(!(await fileHas(tplRam, marker)), "b's bytes are not in the template's RAM file");
    } finally {
      await b[Symbol.asyncDispose]();
      await c[Symbol.asyncDispose]();
      await remove("tpl-b", "tpl-c");
    }
  },
);

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Whether the file holds `text` (grep on the host). */
async function fileHas(path: string, text: string): Promise<boolean> {
  return (await new Deno.Command("grep", { args: ["-qaF", text, path] }).output()).code === 0;
}

/** Whether the upper disk's `/data/etc` (the overlay's upper of /etc) names `entry` (debugfs reads the host file, not the guest). */
async function diskHas(disk: string, entry: string): Promise<boolean> {
  const out = await new Deno.Command("/sbin/debugfs", { args: ["-R", "ls -l /data/etc", disk], stderr: "null" })
    .output();
  return new TextDecoder().decode(out.stdout).includes(entry);
}

Deno.test({ name: "a changed shape makes a new template; directory roots boot cold and say so", ...opts }, async () => {
  const r = await image();
  const a = await Sandbox.builder("tpl-m1").image(r).memory(256).disableNetwork().create();
  const b = await Sandbox.builder("tpl-m2").image(r).memory(320).disableNetwork().create();
  const d = await Sandbox.builder("tpl-dir").image(await busyboxRoot()).memory(256).disableNetwork().create();
  try {
    const k1 = await startOf("tpl-m1");
    const k2 = await startOf("tpl-m2");
    assert(/^[0-9a-f]{32}$/.test(k1) && /^[0-9a-f]{32}$/.test(k2), `${k1} ${k2}`);
    assertNotEquals(k1, k2, "256 MiB and 320 MiB are different templates");
    assert(templates().includes(k1) && templates().includes(k2), templates().join(" "));
    assertEquals((await b.shell("free -m | awk '/Mem/{print ($2 > 256)}'")).stdout.trim(), "1", "320 MiB guest");
    assertEquals(await startOf("tpl-dir"), "cold: directory roots are on virtiofs, which cannot migrate");
    assertEquals((await d.exec("true")).code, 0);
  } finally {
    for (const s of [a, b, d]) await s[Symbol.asyncDispose]();
    await remove("tpl-m1", "tpl-m2", "tpl-dir");
  }
});

Deno.test({ name: "a failed restore falls back to a cold boot; the template is built anew", ...opts }, async () => {
  const r = await image();
  const a = await Sandbox.builder("tpl-x1").image(r).memory(288).disableNetwork().create();
  const key = await startOf("tpl-x1");
  await a.stopAndWait();
  assert(templates().includes(key), key);
  // Truncate the saved state: qemu cannot load it.
  const state = join(testHome, "templates", key, "state");
  const f = await Deno.open(state, { write: true });
  await f.truncate(4096);
  f.close();
  const t0 = performance.now();
  // The create succeeds all the same: the same sandbox boots cold, and says why.
  const x2 = await Sandbox.builder("tpl-x2").image(r).memory(288).disableNetwork().env("MINE", "x2").create();
  try {
    assert(performance.now() - t0 < 30_000, "the fallback does not wait for the boot timeout");
    const how = await startOf("tpl-x2");
    assert(how.startsWith("cold: the template could not be restored: "), how);
    assertEquals((await x2.shell("echo ${MINE:-none}; hostname")).stdout, "x2\ntpl-x2\n");
    const log = await Deno.readTextFile(join(sandboxDir("tpl-x2"), "runner.log"));
    assert(log.includes(`restoring template ${key.slice(0, 12)} failed: `), log);
    // On the host: the broken template is gone, and one qemu runs for the sandbox (the failed one was reaped).
    assert(!templates().includes(key), "the broken template is gone");
    const qemus = processesMentioning(sandboxDir("tpl-x2")).filter((p) =>
      Deno.readTextFileSync(`/proc/${p}/cmdline`).includes("qemu-system")
    );
    assertEquals(qemus.length, 1, `qemu processes of tpl-x2: ${qemus}`);
  } finally {
    await x2[Symbol.asyncDispose]();
  }
  // The next create builds it again (a whole state file, the devices', beside the RAM's file) and is restored from it.
  const b = await Sandbox.builder("tpl-x3").image(r).memory(288).disableNetwork().create();
  try {
    assertEquals(await startOf("tpl-x3"), key);
    assert((await Deno.stat(state)).size > 64 << 10, "the rebuilt state is whole");
    assertEquals((await Deno.stat(join(testHome, "templates", key, "ram"))).size, 288 << 20, "the template's RAM file");
    assertEquals((await b.exec("true")).code, 0);
  } finally {
    await b[Symbol.asyncDispose]();
    await remove("tpl-x1", "tpl-x2", "tpl-x3");
  }
});

Deno.test({ name: "fork: sb.snapshot(name) and fromSnapshot(name) branch a running sandbox", ...opts }, async () => {
  const r = await image();
  const src = await Sandbox.builder("tpl-src").image(r).memory(256).disableNetwork().create();
  try {
    await src.fs().write("/root/on-disk", "before");
    await src.fs().write("/tmp/in-memory", "tmpfs"); // /tmp is a tmpfs: only the saved memory has it
    await src.snapshot("snap1");
    // The source goes on, and what it does later is not in the snapshot.
    await src.fs().write("/root/after", "later");
    assertEquals((await src.exec("cat", ["/tmp/in-memory"])).stdout, "tmpfs");
    await using fork = await Sandbox.builder("tpl-fork").image(r).memory(256).disableNetwork().env("F", "1")
      .fromSnapshot("snap1").create();
    const log = await Deno.readTextFile(join(sandboxDir("tpl-fork"), "runner.log"));
    assert(/ready: restored from snapshot snap1 of template [0-9a-f]{32} /.test(log), log);
    assertEquals(await fork.fs().readText("/root/on-disk"), "before");
    assertEquals(await fork.fs().readText("/tmp/in-memory"), "tmpfs");
    assertEquals(
      (await fork.exec("test", ["-e", "/root/after"])).code,
      1,
      "the source's later write is not in the fork",
    );
    assertEquals((await fork.shell("hostname; echo ${F:-none}")).stdout, "tpl-fork\n1\n");
    const [a, b] = await Promise.all([
      src.exec("cat", ["/proc/sys/kernel/random/uuid"]),
      fork.exec("cat", ["/proc/sys/kernel/random/uuid"]),
    ]);
    assertNotEquals(a.stdout, b.stdout, "fork and source uuid");
    // Writes of the fork stay its own.
    await fork.fs().write("/root/fork-only", "f");
    assertEquals((await src.exec("test", ["-e", "/root/fork-only"])).code, 1);
    // Two snapshots of one sandbox at once: each its own whole save (before, the second failed its migration's
    // capabilities and resumed the VM while the first one copied its disk).
    await src.fs().write("/root/on-disk", "for both");
    // Two clients (one client's requests are served in turn): the sandbox's own and a second connection.
    {
      await using other = await AgentClient.connect(join(sandboxDir("tpl-src"), "agent.sock"));
      await Promise.all([src.snapshot("snap-a"), other.request("runner.snapshot", { name: "snap-b" })]);
    }
    for (const [snap, name] of [["snap-a", "tpl-fork-a"], ["snap-b", "tpl-fork-b"]]) {
      await using f = await Sandbox.builder(name).image(r).memory(256).disableNetwork().fromSnapshot(snap).create();
      assertEquals(await f.fs().readText("/root/on-disk"), "for both", snap);
    }
    // A taken name is refused; another shape cannot fork it.
    let taken = "";
    await src.snapshot("snap1").catch((e) => taken = String(e.message));
    assert(/already exists/.test(taken), taken);
    const other = await Sandbox.builder("tpl-fork2").image(r).memory(320).disableNetwork().fromSnapshot("snap1")
      .create().then(() => "created", (e) => `${e.code}: ${e.message}`);
    assert(other.startsWith("INVALID_CONFIG:") && /another image or shape/.test(other), other);
  } finally {
    await src[Symbol.asyncDispose]();
    await remove("tpl-src", "tpl-fork", "tpl-fork2", "tpl-fork-a", "tpl-fork-b");
  }
});
