/**
 * The lifecycle calls no other test drives in a VM, checked on the host's
 * processes and the guest's own state: `Sandbox.startDetached`, a handle's
 * `startDetached()`, `start()` and `remove()`, `replace()` over a running
 * sandbox, `removePersisted()`, and a numeric `user`. The starts run in
 * another process that then exits, so "detached" and "attached" are what
 * happens to the VM when its starter is gone.
 */

import { join } from "node:path";
import { leftovers, processesMentioning, sandboxDir, skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { NotFoundError, Sandbox, StillRunningError } from "../../mod.ts";
import { statFields } from "../../src/util/proc.ts";

const ignore = skipVmReason !== undefined;

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** A private, writable copy of the busybox root. */
async function privateRoot(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-api-lc-root-" });
  const cp = await new Deno.Command("cp", { args: ["-a", `${await busyboxRoot()}/.`, dir] }).output();
  assert(cp.success, "copy of the busybox root");
  return dir;
}

/** Runs fixtures/starter.ts in its own process; returns its one line of output once it has exited. */
async function starter(name: string, mode: string): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./fixtures/starter.ts", import.meta.url).pathname, name, mode],
    env: { KRUNBOX_HOME: testHome, KRUNBOX_BACKEND: "qemu" },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assertEquals(out.code, 0, `starter ${mode} exited with ${out.code}`);
  return new TextDecoder().decode(out.stdout).trim();
}

/** The guest kernel's boot id: a new one for every boot. */
async function bootId(sb: Sandbox): Promise<string> {
  const id = (await sb.exec("cat", ["/proc/sys/kernel/random/boot_id"])).stdout.trim();
  assert(/^[0-9a-f-]{36}$/.test(id), id);
  return id;
}

/** A host process as pid + start time (so a reused pid is not taken for the same process). */
interface HostProcess {
  pid: number;
  start: string;
}

function hostProcesses(name: string): HostProcess[] {
  return processesMentioning(sandboxDir(name)).flatMap((pid) => {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      return [{ pid, start: statFields(stat)[19] }];
    } catch {
      return [];
    }
  });
}

function alive(p: HostProcess): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${p.pid}/stat`);
    const rest = statFields(stat);
    return rest[19] === p.start && rest[0] !== "Z";
  } catch {
    return false;
  }
}

/** The uids line of the guest process's /proc/self/status. */
async function uids(sb: Sandbox, user?: number): Promise<string> {
  const status = (await sb.execWith("cat", { args: ["/proc/self/status"], user })).stdout;
  return status.split("\n").find((l) => l.startsWith("Uid:"))?.split(/\s+/).slice(1).join(" ") ?? status;
}

Deno.test({ name: "start a stopped sandbox: detached (two ways), attached, then remove it", ignore }, async (t) => {
  const name = "api-lc";
  const root = await privateRoot();
  const mark = crypto.randomUUID();
  await Deno.writeTextFile(join(root, "root/host-mark"), mark);
  let firstBoot = "";
  try {
    await t.step("create, write a mark into the root, stop", async () => {
      const sb = await Sandbox.builder(name).image(root).memory(256).create();
      await sb.fs().write("/root/mark", mark);
      firstBoot = await bootId(sb);
      await sb.stopAndWait();
      assertEquals(await leftovers(name), []);
      assertEquals((await Sandbox.get(name)).status, "stopped");
    });

    await t.step("Sandbox.startDetached: the VM outlives the process that started it", async () => {
      assertEquals(await starter(name, "static-detached"), `owns=false mark=${mark}`);
      assertEquals((await Sandbox.get(name)).status, "running");
      assert(hostProcesses(name).length >= 3, "runner, qemu and virtiofsd run after their starter exited");
      const sb = await (await Sandbox.get(name)).connect();
      const again = await bootId(sb);
      assert(again !== firstBoot, "a new boot");
      assertEquals((await sb.exec("cat", ["/root/mark"])).stdout, mark, "the same root");
      await sb[Symbol.asyncDispose]();
    });

    await t.step("handle.remove() refuses a running sandbox and leaves it as it was", async () => {
      const handle = await Sandbox.get(name);
      await assertRejects(() => handle.remove(), StillRunningError);
      assertEquals((await Sandbox.get(name)).status, "running");
      assert(await exists(sandboxDir(name)));
      await handle.stop();
      assertEquals(await leftovers(name), []);
      assertEquals((await Sandbox.get(name)).status, "stopped");
    });

    await t.step("handle.startDetached(): the VM outlives its starter too", async () => {
      assertEquals(await starter(name, "handle-detached"), `owns=false mark=${mark}`);
      const handle = await Sandbox.get(name);
      assertEquals(handle.status, "running");
      assert(hostProcesses(name).length >= 3);
      const sb = await handle.connect();
      assertEquals((await sb.exec("cat", ["/root/mark"])).stdout, mark);
      await sb[Symbol.asyncDispose]();
      await handle.stop();
      assertEquals(await leftovers(name), []);
    });

    await t.step("handle.start() is attached: the VM ends with the process that started it", async () => {
      assertEquals(await starter(name, "handle-attached"), `owns=true mark=${mark}`);
      assertEquals(await leftovers(name), [], "the VM went down with its starter");
      assertEquals((await Sandbox.get(name)).status, "stopped");
    });

    await t.step("handle.remove() deletes the stopped sandbox's state, not its image directory", async () => {
      await (await Sandbox.get(name)).remove();
      await assertRejects(() => Sandbox.get(name), NotFoundError);
      assertEquals((await Sandbox.list()).some((h) => h.name === name), false);
      assertEquals(await exists(sandboxDir(name)), false, "the sandbox directory is gone");
      // The directory root is the user's: it stays as the host wrote it. The guest's own writes lived in the
      // sandbox's upper (a directory root is private to its sandbox) and are gone with its state.
      assertEquals(await Deno.readTextFile(join(root, "root/host-mark")), mark, "the root directory stays");
      assertEquals(await exists(join(root, "root/mark")), false, "the guest's writes never reached the host root");
      await assertRejects(() => Sandbox.startDetached(name), NotFoundError);
    });
  } finally {
    await (await Sandbox.get(name).catch(() => undefined))?.kill().catch(() => {});
    await Sandbox.remove(name).catch(() => {});
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test({ name: "replace() over a running sandbox, then removePersisted()", ignore }, async (t) => {
  const name = "api-rep";
  const root = await busyboxRoot();
  let oldProcs: HostProcess[] = [];
  let oldBoot = "";
  let fresh: Sandbox | undefined;
  try {
    await t.step("replace() kills the running VM and boots a new one under the name", async () => {
      const old = await Sandbox.builder(name).image(root).memory(256).createDetached();
      oldBoot = await bootId(old);
      oldProcs = hostProcesses(name);
      assert(oldProcs.length >= 3, "runner, qemu and virtiofsd of the first sandbox");
      fresh = await Sandbox.builder(name).image(root).memory(256).user(4321).replace().create();
      const gone = oldProcs.filter(alive);
      assertEquals(gone, [], "none of the old VM's host processes is left");
      assert(await bootId(fresh) !== oldBoot, "the new sandbox is a new boot");
      const now = hostProcesses(name);
      assert(now.length >= 3 && now.every((p) => !oldProcs.some((o) => o.pid === p.pid)), "new host processes");
      assertEquals((await Sandbox.list()).filter((h) => h.name === name).length, 1);
      await old[Symbol.asyncDispose]();
    });

    await t.step("user(4321): the guest's processes run with that uid (an exec's user overrides it)", async () => {
      assertEquals(await uids(fresh!), "4321 4321 4321 4321");
      assertEquals(await uids(fresh!, 0), "0 0 0 0");
      assertEquals((await Sandbox.get(name)).config().user, 4321, "stored");
    });

    await t.step("removePersisted() stops the running sandbox and deletes its state", async () => {
      const procs = hostProcesses(name);
      await fresh!.removePersisted();
      assertEquals(procs.filter(alive), [], "its host processes are gone when it returns");
      await assertRejects(() => Sandbox.get(name), NotFoundError);
      assertEquals(await exists(sandboxDir(name)), false);
      fresh = undefined;
    });
  } finally {
    await fresh?.[Symbol.asyncDispose]();
    await (await Sandbox.get(name).catch(() => undefined))?.kill().catch(() => {});
    await Sandbox.remove(name).catch(() => {});
    assertEquals(await leftovers(name), []);
  }
});
