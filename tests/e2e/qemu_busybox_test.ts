/**
 * Real qemu-TCG VMs with a busybox root built from Debian's busybox-static.
 * One VM is shared by the exec/fs tests (boots cost seconds); lifecycle
 * tests boot their own and check that no process is left behind.
 */

import { leftovers, processesMentioning, sandboxDir, skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { guestPids, guestResources, waitGuestPids } from "../util/guest.ts";
import { errorFromWire } from "../../src/errors.ts";
import { Store } from "../../src/store/db.ts";
import { reconciled } from "../../src/sandbox/state.ts";
import { homeLayout } from "../../src/store/home.ts";
import type { RunnerEvent } from "../../src/vmm/runner.ts";
import {
  AlreadyExistsError,
  BackendUnavailableError,
  BootTimeoutError,
  ExecSpawnError,
  ExecTimeoutError,
  FsError,
  InvalidConfigError,
  NotRunningError,
  Sandbox,
} from "../../mod.ts";

const ignore = skipVmReason !== undefined;
const root = ignore ? "" : await busyboxRoot();
let shared: Sandbox | undefined;

async function sb(): Promise<Sandbox> {
  return shared ??= await Sandbox.builder("shared").image(root).memory(256).env("GREETING", "hi")
    .script("hello", "#!/bin/sh\necho hello from a script\n")
    .patch((p) => p.mkdir("/tmp/patched/dir"))
    .patch((p) => p.text("/tmp/patched/motd", "line 1\n", 0o600))
    .patch((p) => p.append("/tmp/patched/motd", "line 2\n"))
    .patch((p) => p.symlink("motd", "/tmp/patched/link"))
    .patch((p) => p.copy(`${root}/etc/passwd`, "/tmp/patched/passwd"))
    .patch((p) => p.remove("/tmp/patched/dir"))
    .create();
}

Deno.test.afterAll(async () => {
  await shared?.[Symbol.asyncDispose]();
  if (shared) assertEquals(await leftovers("shared"), []);
});

Deno.test({ name: "exec returns output and exit codes from a real VM", ignore }, async () => {
  const s = await sb();
  const out = await s.exec("sh", ["-c", "echo out; echo err >&2; exit 7"]);
  assertEquals([out.stdout, out.stderr, out.code, out.success], ["out\n", "err\n", 7, false]);
  const ok = await s.shell("echo $GREETING from $(hostname)");
  assertEquals(ok.stdout, "hi from shared\n");
  assertEquals(ok.success, true);
});

Deno.test({ name: "builder patches edit the root before create() returns", ignore }, async () => {
  const s = await sb();
  const out = await s.shell(
    "cat /tmp/patched/link; stat -c %a /tmp/patched/motd; test -d /tmp/patched/dir || echo removed",
  );
  assertEquals(out.stdout, "line 1\nline 2\n600\nremoved\n");
  assertEquals(await s.fs().readText("/tmp/patched/passwd"), await Deno.readTextFile(`${root}/etc/passwd`));
});

Deno.test({ name: "builder scripts are on PATH", ignore }, async () => {
  assertEquals((await (await sb()).exec("hello")).stdout, "hello from a script\n");
});

Deno.test({ name: "exec options: env merged, cwd, stdin, user", ignore }, async () => {
  const s = await sb();
  const out = await s.execWith("sh", {
    args: ["-c", 'echo "$GREETING $EXTRA $(pwd) $(id -u)"; cat'],
    env: { EXTRA: "x" },
    cwd: "/tmp",
    stdin: "piped in",
    user: "nobody",
  });
  assertEquals(out.stdout, "hi x /tmp 65534\npiped in");
});

Deno.test({ name: "a missing program is a typed spawn error", ignore }, async () => {
  const e = await assertRejects(() => sb().then((s) => s.exec("no-such-program")), ExecSpawnError);
  assertEquals(e.kind, "not_found");
  await assertRejects(() => sb().then((s) => s.exec("")), InvalidConfigError);
});

Deno.test({ name: "a timeout kills a process that ignores SIGTERM", ignore }, async () => {
  const s = await sb();
  // The checks below list guest processes a few times before the deadline; on a busy host one listing takes
  // seconds, so the deadline scales with a measured one (the process must still be there when they run).
  const p0 = performance.now();
  await guestPids(s, ["sleep", "61"]);
  const timeout = Math.max(4000, Math.ceil(4 * (performance.now() - p0)) + 1500);
  const t0 = performance.now();
  // SIG_IGN for TERM survives the exec: the guest process is `sleep 61` and ignores SIGTERM.
  const rejected = assertRejects(
    () => s.execWith("sh", { args: ["-c", "trap '' TERM; exec sleep 61"], timeout }),
    ExecTimeoutError,
  );
  // Positive control, in the guest's /proc (the root has no pgrep): it runs, and a SIGTERM leaves it running.
  const [pid] = await waitGuestPids(s, ["sleep", "61"], (p) => p.length === 1, 3000);
  assert(pid, "the guest shows the process while it runs");
  await s.shell(`kill -TERM ${pid}`);
  await new Promise((r) => setTimeout(r, 300));
  assertEquals(await guestPids(s, ["sleep", "61"]), [pid], "it ignores SIGTERM");
  await rejected;
  assert(performance.now() - t0 < timeout + 10_000, "rejected after the deadline, not a minute later");
  assertEquals(await waitGuestPids(s, ["sleep", "61"], (p) => p.length === 0, 5000), [], "the guest killed it");
});

Deno.test({ name: "streaming exec delivers output as it comes", ignore }, async () => {
  const s = await sb();
  const p = await s.execStream("sh", { args: ["-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"] });
  const events: string[] = [];
  for await (const ev of p) {
    events.push(ev.type === "exit" ? `exit ${ev.status.code}` : new TextDecoder().decode(ev.data));
  }
  assertEquals(events.join(""), "1\n2\n3\nexit 0");
});

Deno.test({ name: "fs round-trips files and reports errno names", ignore }, async () => {
  const fs = (await sb()).fs();
  await fs.mkdir("/tmp/d/e");
  const bytes = new Uint8Array(3 << 20).map((_, i) => i * 7);
  await fs.write("/tmp/d/e/blob", bytes);
  assertEquals(await fs.read("/tmp/d/e/blob"), bytes);
  assertEquals((await fs.stat("/tmp/d/e/blob")).size, bytes.length);
  assertEquals((await fs.list("/tmp/d")).map((e) => e.name), ["e"]);
  assertEquals((await assertRejects(() => fs.read("/nope"), FsError)).errno, "ENOENT");
  const host = await Deno.makeTempDir();
  await fs.copyToHost("/tmp/d", `${host}/d`);
  assertEquals(await Deno.readFile(`${host}/d/e/blob`), bytes);
  await Deno.remove(host, { recursive: true });
});

Deno.test({ name: "metrics report guest memory and the configured limit", ignore }, async () => {
  const s = await sb();
  const m = await s.metrics();
  assertEquals(m.memoryLimitBytes, 256 * 1024 * 1024);
  // The guest kernel's own MemTotal: the VM really has (a little under) the configured 256 MiB.
  const { memTotalBytes } = await guestResources(s);
  assert(memTotalBytes > 0.75 * m.memoryLimitBytes && memTotalBytes <= m.memoryLimitBytes, `MemTotal ${memTotalBytes}`);
  assert(m.memoryBytes > 0 && m.memoryBytes < memTotalBytes);
  assert(m.uptimeMs > 0);
});

Deno.test({ name: "a name in use fails fast", ignore }, async () => {
  await sb();
  const t0 = performance.now();
  await assertRejects(() => Sandbox.builder("shared").image(root).create(), AlreadyExistsError);
  assert(performance.now() - t0 < 1000);
});

Deno.test({ name: "create → exec → stop leaves no qemu, virtiofsd or runner behind", ignore }, async () => {
  const s = await Sandbox.builder("lifecycle").image(root).memory(256).create();
  assert(processesMentioning(sandboxDir("lifecycle")).length >= 3, "runner, qemu and virtiofsd run");
  assertEquals((await s.exec("true")).code, 0);
  const status = await s.stopAndWait();
  assertEquals(status.status, "stopped");
  assertEquals(await leftovers("lifecycle"), []);
  assertEquals((await Sandbox.get("lifecycle")).status, "stopped");
  await assertRejects(() => s.exec("true"), NotRunningError);
  await Sandbox.remove("lifecycle");
});

Deno.test({ name: "kill ends the VM: no runner, qemu or virtiofsd of it is left", ignore }, async () => {
  const s = await Sandbox.builder("killed").image(root).memory(256).create();
  assert(processesMentioning(sandboxDir("killed")).length >= 2, "the VM's processes run before the kill");
  await s.kill();
  assertEquals(await leftovers("killed"), []);
  await Sandbox.remove("killed");
});

Deno.test({ name: "the VM goes down when its owner is SIGKILLed", ignore }, async () => {
  const owner = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./fixtures/owner.ts", import.meta.url).pathname, "orphan", root],
    env: { KRUNBOX_HOME: testHome, KRUNBOX_BACKEND: "qemu" },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = owner.stdout.pipeThrough(new TextDecoderStream()).getReader();
  assertEquals((await reader.read()).value?.trim(), "ready");
  assert(processesMentioning(sandboxDir("orphan")).length >= 3);
  owner.kill("SIGKILL");
  await owner.status;
  reader.releaseLock();
  await owner.stdout.cancel().catch(() => {});
  assertEquals(await leftovers("orphan"), []);
  assertEquals((await Sandbox.get("orphan")).status, "stopped");
  await Sandbox.remove("orphan");
});

Deno.test({
  name: "a guest that is not ready in time fails create with a BootTimeoutError naming the sandbox and the deadline",
  ignore,
}, async () => {
  Deno.env.set("KRUNBOX_BOOT_TIMEOUT_MS", "300");
  try {
    const e = await assertRejects(() => Sandbox.builder("slow").image(root).create(), BootTimeoutError);
    assert(e.message.includes("300 ms"));
    // The runner's own error, fields and all (not rebuilt around its message by the caller).
    assertEquals([e.sandbox, e.timeoutMs], ["slow", 300]);
    assertEquals(e.message.split("did not become ready").length, 2, e.message);
  } finally {
    Deno.env.delete("KRUNBOX_BOOT_TIMEOUT_MS");
  }
  assertEquals(await leftovers("slow"), []);
  await assertRejects(() => Sandbox.get("slow"), Error);
});

Deno.test({ name: "missing assets give the doctor's message as a typed error", ignore }, async () => {
  const emptyHome = await Deno.makeTempDir();
  Deno.env.set("KRUNBOX_HOME", emptyHome);
  try {
    const e = await assertRejects(() => Sandbox.builder("nokernel").image(root).create(), BackendUnavailableError);
    assert(e.message.includes("setup"), e.message);
  } finally {
    Deno.env.set("KRUNBOX_HOME", testHome);
  }
  assertEquals(processesMentioning(emptyHome), []);
  await Deno.remove(emptyHome, { recursive: true });
});

Deno.test(
  { name: "a boot failure in the runner reaches its starter as the same class, fix and all", ignore },
  async () => {
    // A helper that exits at start: virtiofsd is /bin/false. No VM boots.
    const name = "badhelper";
    const dir = sandboxDir(name);
    await Deno.mkdir(dir, { recursive: true });
    const spec = {
      name,
      backend: "qemu",
      cpus: 1,
      memoryMib: 256,
      dir,
      root: { kind: "dir", path: root },
      shares: [],
      ports: [],
      network: "none",
      boot: { hostname: name },
      bootTimeoutMs: 30_000,
      programs: { "qemu-system-x86_64": "/bin/false", virtiofsd: "/bin/false" },
    };
    await Deno.writeTextFile(`${dir}/vm.json`, JSON.stringify(spec));
    {
      using store = Store.open(homeLayout().db);
      store.insert(name, "{}", "creating", false);
    }
    const runner = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../../src/vmm/runner.ts", import.meta.url).href, dir, "attached"],
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).output();
    const out = await runner;
    assertEquals(out.code, 1);
    const event = JSON.parse(new TextDecoder().decode(out.stdout).split("\n")[0]) as RunnerEvent;
    assert(event.event === "failed" && event.error, JSON.stringify(event));
    const e = errorFromWire(event.error);
    assert(e instanceof BackendUnavailableError, `${e.name}: ${e.message}`);
    assertEquals(e.backend, "qemu");
    assert(e.missing.startsWith("virtiofsd exited at start"), e.missing);
    assertEquals(e.fix, `see ${dir}/runner.log`);
    {
      // The runner reports through its status file (it never opens the database); a reader merges it.
      using store = Store.open(homeLayout().db);
      const { row } = reconciled(store, store.get(name)!);
      assertEquals(row.status, "crashed");
      assert(
        row.stopReason?.startsWith("boot failed: qemu backend unavailable: virtiofsd exited at start"),
        row.stopReason!,
      );
      store.delete(name);
    }
    assertEquals(await leftovers(name), []);
    await Deno.remove(dir, { recursive: true });
  },
);
