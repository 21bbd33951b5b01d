/**
 * krunbox as an ordinary user (DESIGN.md "Containment": root is never
 * assumed). The test, as root, makes a throwaway user (`useradd`, removed at
 * the end) with a private home holding a copy of the provisioned assets, a
 * copy of the deno binary and of the package's sources, and a busybox root
 * the user owns. As that user (`setpriv`, no supplementary groups) the CLI
 * creates a qemu sandbox with a read-only and a writable bind volume, runs
 * commands in it, and removes it. The host checks with its own eyes:
 * - the VM and its file servers run as the user's uid (`/proc/<pid>/status`),
 *   never as root;
 * - a file the guest writes on the writable volume exists on the host, owned
 *   by the user (positive control for the refusals below);
 * - the read-only volume stays byte-identical after the guest's
 *   `mount -o remount,rw` and write (the share itself is read-only);
 * - `chmod u+s` and `mknod` on the writable volume leave no setuid file and
 *   no device node on the host;
 * - every entry of the user's state home is private (no group/other bits).
 *
 * @module
 */

import { join } from "node:path";
import { skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertMatch } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { homeLayout } from "../../src/store/home.ts";

const repo = new URL("../../", import.meta.url).pathname;
const dec = new TextDecoder();

async function have(cmd: string, args: string[]): Promise<boolean> {
  return await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()
    .then((o) => o.success, () => false);
}

const asRoot = Deno.uid() === 0;
const tools = asRoot && await have("useradd", ["--help"]) && await have("setpriv", ["--version"]);
const ignore = skipVmReason !== undefined || !tools;
if (skipVmReason === undefined && !tools) {
  console.log("SKIPPING unprivileged_test: needs root (to make a throwaway user) with useradd and setpriv");
}

async function run(cmd: string, args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}) {
  const out = await new Deno.Command(cmd, {
    args,
    env: opts.env,
    cwd: opts.cwd,
    clearEnv: opts.env !== undefined,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function must(cmd: string, args: string[]): Promise<string> {
  const out = await run(cmd, args);
  assertEquals(out.code, 0, `${cmd} ${args.join(" ")}: ${out.stderr}`);
  return out.stdout;
}

/** Real uids (the first field of `Uid:`) of the processes whose command line mentions `text`. */
async function uidsOf(text: string): Promise<Map<number, { uid: number; cmd: string }>> {
  const found = new Map<number, { uid: number; cmd: string }>();
  for await (const e of Deno.readDir("/proc")) {
    const pid = Number(e.name);
    if (!Number.isInteger(pid) || pid === Deno.pid) continue;
    try {
      const cmd = (await Deno.readTextFile(`/proc/${pid}/cmdline`)).replaceAll("\0", " ");
      if (!cmd.includes(text)) continue;
      const status = await Deno.readTextFile(`/proc/${pid}/status`);
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
      found.set(pid, { uid, cmd });
    } catch {
      // Gone meanwhile.
    }
  }
  return found;
}

/** Every path under `dir` whose mode has a group or other bit. */
async function looseEntries(dir: string): Promise<string[]> {
  const loose: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    const st = await Deno.lstat(p);
    if (st.isSymlink) continue;
    if (((st.mode ?? 0) & 0o077) !== 0) loose.push(`${p} ${((st.mode ?? 0) & 0o777).toString(8)}`);
    if (st.isDirectory && e.name !== "assets") loose.push(...await looseEntries(p));
  }
  return loose;
}

Deno.test({ name: "unprivileged: a throwaway user runs a qemu sandbox; the host holds", ignore }, async (t) => {
  const user = `kbx${crypto.randomUUID().slice(0, 8)}`;
  await must("useradd", ["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/false", user]);
  const parent = await Deno.makeTempDir({ prefix: "krunbox-unpriv-" });
  try {
    const uid = Number((await must("id", ["-u", user])).trim());
    const gid = Number((await must("id", ["-g", user])).trim());
    assert(uid > 0, `useradd made uid ${uid}`);
    await Deno.chmod(parent, 0o755);
    const home = join(parent, "home");
    const denoDir = join(parent, "deno-dir");
    const pkg = join(parent, "pkg");
    const shares = join(parent, "shares");
    for (const d of [home, denoDir, pkg, shares, join(shares, "ro"), join(shares, "rw")]) await Deno.mkdir(d);
    // The provisioned assets, copied with links followed (the original home is root's and private, and a test
    // before may have made the test home's assets a directory of links: tests/util/fresh_assets.ts).
    await must("cp", ["-a", "--dereference", await Deno.realPath(homeLayout().assets), join(home, "assets")]);
    const deno = join(parent, "deno");
    await Deno.copyFile(Deno.execPath(), deno);
    await Deno.chmod(deno, 0o755);
    // The package's own files: the checkout may sit where the user cannot look (root's home).
    for (const f of ["mod.ts", "cli.ts", "deno.json", "src", "ffi", "agent"]) {
      await must("cp", ["-a", join(repo, f), pkg]);
    }
    const root = await busyboxRoot(join(parent, "root"));
    const original = crypto.getRandomValues(new Uint8Array(4096));
    await Deno.writeFile(join(shares, "ro", "fixed.bin"), original);
    await must("chown", ["-R", `${uid}:${gid}`, home, denoDir, shares, root]);

    const env = {
      KRUNBOX_HOME: home,
      DENO_DIR: denoDir,
      HOME: denoDir,
      TMPDIR: denoDir,
      NO_COLOR: "1",
      PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    };
    const asUser = (...args: string[]) =>
      run("setpriv", [`--reuid=${uid}`, `--regid=${gid}`, "--clear-groups", "--", deno, ...args], { env, cwd: pkg });
    const cli = (...args: string[]) => asUser("run", "-A", join(pkg, "cli.ts"), ...args);
    const NAME = "unpriv";

    const created = await cli(
      "create",
      "--name",
      NAME,
      "--memory",
      "256",
      "--no-network",
      "-v",
      `${join(shares, "ro")}:/ro:ro`,
      "-v",
      `${join(shares, "rw")}:/rw`,
      root,
    );
    assertEquals(created.code, 0, `create as ${user}: ${created.stdout}${created.stderr}`);
    try {
      await t.step("the VM and its file servers run as the user, none as root", async () => {
        const procs = await uidsOf(join(home, "sandboxes"));
        const qemu = [...procs.values()].filter((p) => /qemu-system/.test(p.cmd));
        assert(qemu.length === 1, `one qemu for the sandbox, found: ${JSON.stringify([...procs.values()])}`);
        const shareServers = [...procs.values()].filter((p) => /virtiofsd/.test(p.cmd));
        assert(shareServers.length >= 2, `virtiofsd for the root and the volumes: ${JSON.stringify(shareServers)}`);
        for (const p of procs.values()) assertEquals(p.uid, uid, `runs as uid ${p.uid}: ${p.cmd}`);
      });

      await t.step("a write on the writable volume reaches the host, owned by the user", async () => {
        const out = await cli("exec", NAME, "sh", "-c", "echo hello > /rw/made.txt && id -u");
        assertEquals(out.code, 0, out.stderr);
        assertEquals(out.stdout.trim(), "0", "the guest is root in its VM");
        assertEquals(await Deno.readTextFile(join(shares, "rw", "made.txt")), "hello\n");
        assertEquals((await Deno.lstat(join(shares, "rw", "made.txt"))).uid, uid);
      });

      await t.step("the read-only volume stays as it was after remount,rw and a write", async () => {
        const out = await cli(
          "exec",
          NAME,
          "sh",
          "-c",
          "mount -o remount,rw /ro; echo owned > /ro/fixed.bin; echo new > /ro/new.txt; cat /ro/fixed.bin | wc -c",
        );
        assertMatch(out.stdout, /4096/, `the guest reads the share (positive control): ${out.stdout}${out.stderr}`);
        assertEquals(await Deno.readFile(join(shares, "ro", "fixed.bin")), original);
        assert(!(await Deno.lstat(join(shares, "ro", "new.txt")).then(() => true, () => false)), "new.txt was made");
      });

      await t.step("no setuid file and no device node on the host", async () => {
        const out = await cli(
          "exec",
          NAME,
          "sh",
          "-c",
          "cp /bin/busybox /rw/suid; chmod 4755 /rw/suid; mknod /rw/null c 1 3; mkfifo /rw/fifo; ls -l /rw",
        );
        const suid = await Deno.lstat(join(shares, "rw", "suid"));
        assert(suid.isFile, `the copy reached the host (positive control): ${out.stdout}${out.stderr}`);
        assertEquals((suid.mode ?? 0) & 0o6000, 0, `setid bits on the host: ${(suid.mode ?? 0).toString(8)}`);
        const dev = await Deno.lstat(join(shares, "rw", "null")).catch(() => undefined);
        assert(!dev?.isCharDevice && !dev?.isBlockDevice, "a device node was planted on the host");
      });

      await t.step("the user's state home is private", async () => {
        const loose = await looseEntries(home);
        assertEquals(loose, [], `loose entries:\n${loose.join("\n")}`);
      });
    } finally {
      const rm = await cli("rm", "-f", NAME);
      assertEquals(rm.code, 0, `rm -f: ${rm.stdout}${rm.stderr}`);
    }
    const left = await uidsOf(join(home, "sandboxes"));
    assertEquals([...left.keys()], [], `processes left: ${JSON.stringify([...left.values()])}`);
  } finally {
    await run("pkill", ["-KILL", "-u", user]);
    await run("userdel", [user]);
    await Deno.remove(parent, { recursive: true }).catch(() => {});
  }
});
