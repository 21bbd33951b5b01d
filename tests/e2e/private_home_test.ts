/**
 * A private state home whatever the umask (DESIGN.md "Containment"): the
 * test is the other local user. One sandbox (a real qemu VM) is created by a
 * CLI process under umask 002, then stopped and started again under umask
 * 000; each time the host walks the whole state home with Deno.lstat (no
 * group/other bit on any directory or file krunbox made; a file and a
 * directory the test makes with the same loose umask in the sandbox's
 * directory do have them, so the walk sees modes), and a second uid
 * (`setpriv --reuid=65534`) running a tiny client with the same deno binary
 * fails to connect to agent.sock, vm.sock (libkrun's agent port, which a qemu
 * sandbox never has: the directory refuses the lookup before its absence shows) and
 * fs-root.sock and to open db.sqlite, each with
 * EACCES, while the same client as root gets the agent's ready frame (and as
 * 65534 connects to a socket of the test's own in an open directory). Last,
 * an existing home loosened by hand to 0755/0644 is tightened by the next
 * command.
 */

import { join } from "node:path";
import { processesMentioning, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { homeLayout } from "../../src/store/home.ts";

const asRoot = Deno.uid() === 0;
const haveSetpriv = await new Deno.Command("setpriv", { args: ["--version"], stdout: "null", stderr: "null" }).output()
  .then((o) => o.success, () => false);
const ignore = skipVmReason !== undefined || !asRoot || !haveSetpriv;

const cli = new URL("../../cli.ts", import.meta.url).pathname;
const NOBODY = 65534;
const NAME = "private-home";

/** The attacker's client: connects to a unix socket (printing what it reads first) or opens a file. */
const CLIENT = `
const [kind, path] = Deno.args;
try {
  if (kind === "connect") {
    const conn = await Deno.connect({ transport: "unix", path });
    const buf = new Uint8Array(4096);
    const timer = setTimeout(() => conn.close(), 10000);
    const n = await conn.read(buf).catch(() => null);
    clearTimeout(timer);
    console.log(JSON.stringify({ ok: true, text: new TextDecoder().decode(buf.subarray(0, n ?? 0)) }));
  } else {
    (await Deno.open(path, { read: true })).close();
    console.log(JSON.stringify({ ok: true }));
  }
} catch (e) {
  console.log(JSON.stringify({ ok: false, name: e.name, code: e.code }));
}
`;

interface Outcome {
  ok: boolean;
  text?: string;
  name?: string;
  code?: string;
}

Deno.test({
  name: "private home: 0700/0600 under umask 002 and 000, a second uid cannot reach the sockets or db",
  ignore,
}, async (t) => {
  const parent = await Deno.makeTempDir({ prefix: "krunbox-private-" });
  await Deno.chmod(parent, 0o755); // open on purpose: the boundary must be krunbox's own directories
  const home = join(parent, "home");
  const real = homeLayout();
  const root = await busyboxRoot();
  const env = { KRUNBOX_HOME: home, KRUNBOX_BACKEND: "qemu", NO_COLOR: "1" };

  /** The CLI under a umask, through `sh -c 'umask U; exec deno run …'`. */
  async function krunbox(umask: string, ...args: string[]) {
    const out = await new Deno.Command("sh", {
      args: ["-c", `umask ${umask}; exec "$0" run -A "$@"`, Deno.execPath(), cli, ...args],
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  }

  // The client's deno must be readable by uid 65534: the usual one lives under /root (0700), so copy it.
  let deno = Deno.execPath();
  const denoDir = join(parent, "deno-dir");
  await Deno.mkdir(denoDir);
  await Deno.chown(denoDir, NOBODY, NOBODY);
  const client = join(parent, "client.mjs");
  await Deno.writeTextFile(client, CLIENT);
  await Deno.chmod(client, 0o644);
  const asNobody = (bin: string, ...args: string[]) =>
    new Deno.Command("setpriv", {
      args: [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", bin, ...args],
      env: { DENO_DIR: denoDir, HOME: denoDir, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
  if (!(await asNobody(deno, "--version")).success) {
    await Deno.mkdir(join(parent, "bin"));
    deno = join(parent, "bin", "deno");
    await Deno.copyFile(Deno.execPath(), deno);
    await Deno.chmod(deno, 0o755);
  }
  const probe = await asNobody(deno, "--version");
  assert(probe.success, `uid ${NOBODY} runs ${deno}: ${new TextDecoder().decode(probe.stderr)}`);

  async function attempt(asUid: "root" | "nobody", kind: "connect" | "open", path: string): Promise<Outcome> {
    const args = ["run", "-A", "--no-config", client, kind, path];
    const out = asUid === "nobody"
      ? await asNobody(deno, ...args)
      : await new Deno.Command(deno, { args, env: { NO_COLOR: "1" }, stdout: "piped", stderr: "piped" }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assert(out.success && text, `client as ${asUid}: ${new TextDecoder().decode(out.stderr)}`);
    return JSON.parse(text.split("\n").at(-1)!) as Outcome;
  }

  // A home as a user with a loose umask would have made it by hand (0777), linking the provisioned assets
  // and cache of the real home (links are never followed by the walk nor tightened).
  await Deno.mkdir(home);
  await Deno.chmod(home, 0o777);
  await Deno.symlink(real.assets, join(home, "assets"));
  await Deno.symlink(real.cache, join(home, "cache"));
  const dir = join(home, "sandboxes", NAME);

  /** Walks the home with lstat: loose directories/files, sockets seen (with their directory's mode). */
  async function walk(): Promise<{ loose: string[]; sockets: Map<string, number>; controls: Map<string, number> }> {
    const loose: string[] = [];
    const sockets = new Map<string, number>();
    const controls = new Map<string, number>();
    async function visit(path: string, parentMode: number) {
      const st = await Deno.lstat(path);
      const mode = st.mode! & 0o7777;
      if (st.isSymlink) return;
      if (st.isSocket) {
        sockets.set(path.slice(dir.length + 1), parentMode);
        return;
      }
      if (path.includes("/control-")) {
        controls.set(path.slice(dir.length + 1), mode);
        return;
      }
      if (mode & 0o077) loose.push(`${path} ${mode.toString(8)}`);
      if (st.isDirectory) { for await (const e of Deno.readDir(path)) await visit(join(path, e.name), mode); }
    }
    await visit(home, 0);
    return { loose, sockets, controls };
  }

  async function checkAll(umask: string) {
    await t.step(
      `umask ${umask}: no directory or file under the home has a group or other bit; sockets only in 0700 directories`,
      async () => {
        const made = await new Deno.Command("sh", {
          args: ["-c", `umask ${umask}; : > "$0/control-file"; mkdir "$0/control-dir"`, dir],
        }).output();
        assert(made.success);
        const { loose, sockets, controls } = await walk();
        const expect = umask === "000" ? [0o666, 0o777] : [0o664, 0o775];
        assertEquals([controls.get("control-file"), controls.get("control-dir")], expect, "the walk sees loose modes");
        assertEquals(loose, [], "nothing krunbox made is open to group or others");
        // qemu's agent port is its stdio (no vm.sock, which is libkrun's and unlinked once connected); agent.sock and
        // the virtiofsd sockets stay for the VM's life.
        assert(sockets.has("agent.sock") && sockets.has("fs-root.sock"), `sockets: ${[...sockets.keys()]}`);
        for (const [s, m] of sockets) assertEquals(m & 0o077, 0, `${s} is in a 0700 directory`);
        for (const f of ["db.sqlite", "sandboxes", `sandboxes/${NAME}/vm.json`, `sandboxes/${NAME}/console.log`]) {
          assert(await Deno.lstat(join(home, f)).then(() => true, () => false), `${f} exists (the walk covered it)`);
        }
        await Deno.remove(join(dir, "control-file"));
        await Deno.remove(join(dir, "control-dir"));
      },
    );

    await t.step(
      `umask ${umask}: uid ${NOBODY} gets EACCES on agent.sock, vm.sock, fs-root.sock and db.sqlite; root reads the ready frame`,
      async () => {
        // Positive controls: the client as root gets the agent's ready frame; as nobody it connects to a socket
        // of ours in an open directory (so a failure below is the modes, not a broken client).
        const mine = await Deno.makeTempDir({ dir: parent });
        await Deno.chmod(mine, 0o755);
        const sockPath = join(mine, "open.sock");
        const listener = Deno.listen({ transport: "unix", path: sockPath });
        await Deno.chmod(sockPath, 0o777);
        const accepting = (async () => {
          for await (const c of listener) {
            await c.write(new TextEncoder().encode("hello from the control"));
            c.close();
          }
        })();
        try {
          const control = await attempt("nobody", "connect", sockPath);
          assertEquals([control.ok, control.text], [true, "hello from the control"], JSON.stringify(control));
          const byRoot = await attempt("root", "connect", join(dir, "agent.sock"));
          assert(byRoot.ok && byRoot.text?.includes("ready"), `root reads the ready frame: ${JSON.stringify(byRoot)}`);
          for (
            const [kind, path] of [
              ["connect", join(dir, "agent.sock")],
              ["connect", join(dir, "vm.sock")], // absent on qemu: the directory refuses the lookup first
              ["connect", join(dir, "fs-root.sock")],
              ["open", join(home, "db.sqlite")],
            ] as const
          ) {
            const r = await attempt("nobody", kind, path);
            assertEquals([r.ok, r.code], [false, "EACCES"], `${kind} ${path}: ${JSON.stringify(r)}`);
          }
        } finally {
          listener.close();
          await accepting.catch(() => {});
        }
      },
    );
  }

  try {
    const created = await krunbox("002", "create", "--name", NAME, "--memory", "256", "-e", "TOKEN=at-rest", root);
    assertEquals(created.code, 0, created.stderr);
    await checkAll("002");

    const stopped = await krunbox("022", "stop", NAME);
    assertEquals(stopped.code, 0, stopped.stderr);
    const started = await krunbox("000", "start", NAME);
    assertEquals(started.code, 0, started.stderr);
    await checkAll("000");

    await t.step("a home loosened by hand to 0755/0644 is tightened by the next command", async () => {
      for (const d of [home, join(home, "sandboxes"), dir]) await Deno.chmod(d, 0o755);
      for (const f of [join(home, "db.sqlite"), join(dir, "vm.json"), join(dir, "console.log")]) {
        await Deno.chmod(f, 0o644);
      }
      assert((await walk()).loose.length >= 6, "loosened");
      const ls = await krunbox("022", "ls");
      assertEquals(ls.code, 0, ls.stderr);
      assertEquals((await walk()).loose, []);
      const r = await attempt("nobody", "connect", join(dir, "agent.sock"));
      assertEquals([r.ok, r.code], [false, "EACCES"], JSON.stringify(r));
    });
  } finally {
    await krunbox("022", "rm", "-f", NAME);
    for (const pid of processesMentioning(home)) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    await Deno.remove(parent, { recursive: true }).catch(() => {});
  }
});
