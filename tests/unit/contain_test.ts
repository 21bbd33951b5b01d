/**
 * The libkrun runner's containment (src/vmm/contain.ts): the bwrap
 * arguments as a pure function of the spec, and the same arguments run by
 * the real bwrap here, checked from outside like an attacker's target: the
 * contained process's /proc status (capabilities, no_new_privs, seccomp),
 * its namespaces against this process's, and what its root shows — canaries
 * outside every share absent, the share's file and the sandbox directory
 * present (the positive control in the same run).
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertThrows } from "../util/assert.ts";
import type { VmSpec } from "../../src/vmm/backend.ts";
import {
  bwrapArgs,
  type ContainHost,
  containHost,
  INFO_FD,
  RUNNER_CAPS,
  runnerCapMask,
  SECCOMP_FD,
  withContainFds,
} from "../../src/vmm/contain.ts";
import { shareFilter } from "../../src/vmm/seccomp.ts";
import { checkBwrap, requireChecks } from "../../src/vmm/prereqs.ts";
import { BackendUnavailableError } from "../../src/errors.ts";
import { need } from "../util/require.ts";

const SPEC: VmSpec = {
  name: "a",
  backend: "libkrun",
  cpus: 1,
  memoryMib: 256,
  dir: "/h/sandboxes/a",
  root: { kind: "dir", path: "/images/root", upper: "/h/sandboxes/a/upper.ext4" },
  shares: [
    { tag: "vol0", hostPath: "/tmp/data", guestPath: "/data", readonly: false },
    { tag: "vol1", hostPath: "/srv/ro", guestPath: "/ro", readonly: true },
  ],
  ports: [],
  network: "none",
  boot: {},
  bootTimeoutMs: 30000,
};
const HOST: ContainHost = {
  uid: 0,
  deno: "/opt/deno/deno",
  code: "/work/krunbox",
  denoDir: "/root/.cache/deno",
  assets: "/h/assets",
  links: { "/lib": "usr/lib", "/bin": "usr/bin" },
};

/** The index of the option `opt` with exactly these operands. */
function at(args: readonly string[], opt: string, ...operands: string[]): number {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === opt && operands.every((o, j) => args[i + 1 + j] === o)) return i;
  }
  return -1;
}

Deno.test("bwrap args: every path the guest sees, read-only where the spec says, nothing else of the host's", () => {
  const args = bwrapArgs(SPEC, HOST);
  assert(at(args, "--ro-bind", "/images/root", "/images/root") >= 0, "a private dir root is read-only");
  assert(at(args, "--bind", "/tmp/data", "/tmp/data") >= 0, "a writable share");
  assert(at(args, "--ro-bind", "/srv/ro", "/srv/ro") >= 0, "a read-only share is bound read-only");
  assert(at(args, "--bind", "/h/sandboxes/a/upper.ext4", "/h/sandboxes/a/upper.ext4") >= 0, "the upper disk");
  assert(at(args, "--bind", "/h/sandboxes/a", "/h/sandboxes/a") >= 0, "the sandbox dir");
  // The runner never opens the database (it reports through its own status.json): nothing of the home's but its dir.
  assert(!args.some((a) => a.includes("db.sqlite")), "the database is not bound");
  for (const p of ["/h/assets", "/opt/deno", "/work/krunbox", "/root/.cache/deno", "/usr"]) {
    assert(at(args, "--ro-bind", p, p) >= 0, `${p} read-only`);
  }
  assert(at(args, "--setenv", "DENO_DIR", "/root/.cache/deno") >= 0);
  assert(at(args, "--symlink", "usr/lib", "/lib") >= 0 && at(args, "--symlink", "usr/bin", "/bin") >= 0);
  assert(at(args, "--ro-bind-try", "/sbin", "/sbin") >= 0, "a top-level directory that is not a link is bound");
  assert(at(args, "--dev", "/dev") >= 0 && at(args, "--dev-bind-try", "/dev/kvm", "/dev/kvm") >= 0);
  assert(at(args, "--proc", "/proc") >= 0 && at(args, "--tmpfs", "/tmp") >= 0);
  // Nothing wider than asked: no /, /etc, /root, /home or the state home itself.
  const sources = args.flatMap((a, i) => ["--bind", "--ro-bind", "--ro-bind-try"].includes(a) ? [args[i + 1]] : []);
  for (const wide of ["/", "/etc", "/root", "/home", "/h", "/h/sandboxes", "/sys"]) {
    assert(!sources.includes(wide), `${wide} is not bound: ${sources}`);
  }
  // Order: a share under /tmp after the tmpfs (not covered); the runner's own files after every share.
  assert(at(args, "--bind", "/tmp/data", "/tmp/data") > at(args, "--tmpfs", "/tmp"));
  assert(at(args, "--bind", "/h/sandboxes/a", "/h/sandboxes/a") > at(args, "--ro-bind", "/srv/ro", "/srv/ro"));
  for (const o of ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--as-pid-1", "--die-with-parent"]) {
    assert(args.includes(o), o);
  }
  assert(args.includes("--new-session"), "no TIOCSTI into the caller's terminal");
  assert(!args.includes("--unshare-net"), "netd needs the host's network");
  assert(at(args, "--seccomp", String(SECCOMP_FD)) >= 0 && at(args, "--info-fd", String(INFO_FD)) >= 0);
  assert(at(args, "--chdir", SPEC.dir) >= 0);
});

Deno.test("bwrap args: root drops every capability but RUNNER_CAPS; a user gets a user namespace and none", () => {
  const root = bwrapArgs(SPEC, HOST);
  assert(at(root, "--cap-drop", "ALL") >= 0 && !root.includes("--unshare-user"));
  const added = root.flatMap((a, i) => a === "--cap-add" ? [root[i + 1]] : []);
  assertEquals(added, [...RUNNER_CAPS]);
  assert(at(root, "--cap-drop", "ALL") < root.indexOf("--cap-add"), "dropped first");
  for (const bad of ["CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_MKNOD", "CAP_FSETID", "CAP_SYS_PTRACE", "CAP_KILL"]) {
    assert(!added.includes(bad as typeof RUNNER_CAPS[number]), bad);
  }
  assertEquals(runnerCapMask(0), 0xcbn);
  const user = bwrapArgs(SPEC, { ...HOST, uid: 1000 });
  assert(user.includes("--unshare-user") && !user.includes("--cap-add") && !user.includes("--cap-drop"));
  assertEquals(runnerCapMask(1000), 0n);
});

Deno.test("bwrap args: a shared writable root is writable, disks as the spec says, no DENO_DIR: a tmpfs one", () => {
  const rw = bwrapArgs({ ...SPEC, root: { kind: "dir", path: "/images/rw" }, shares: [] }, HOST);
  assert(at(rw, "--bind", "/images/rw", "/images/rw") >= 0);
  const oci = bwrapArgs(
    { ...SPEC, root: { kind: "overlay", lower: "/cache/l.erofs", upper: "/h/sandboxes/a/upper.ext4" } },
    { ...HOST, denoDir: undefined, code: undefined },
  );
  assert(at(oci, "--ro-bind", "/cache/l.erofs", "/cache/l.erofs") >= 0, "the shared lower read-only");
  assert(at(oci, "--setenv", "DENO_DIR", "/tmp/deno") >= 0);
  assert(!oci.includes("/work/krunbox"), "remote code: no local package bound");
});

Deno.test("no bwrap: libkrun's prerequisites fail typed, naming the package", async () => {
  const path = Deno.env.get("PATH");
  Deno.env.set("PATH", "/nonexistent");
  try {
    const check = await checkBwrap();
    assertEquals(check.ok, false);
    const err = assertThrows(() => requireChecks("libkrun", [check]), BackendUnavailableError);
    assertEquals(err.code, "BACKEND_UNAVAILABLE");
    assertMatch(err.message, /bwrap: not found: the libkrun runner .* runs only inside bubblewrap/);
    assertMatch(err.fix ?? "", /apt-get install bubblewrap/);
  } finally {
    if (path === undefined) Deno.env.delete("PATH");
    else Deno.env.set("PATH", path);
  }
  // Positive control: with the PATH back, bwrap is found where it is installed (in /usr/bin from Debian's package).
  const found = await checkBwrap();
  if (found.ok) assertMatch(found.detail, /\/bwrap$/);
});

const bwrap = await checkBwrap();
const noBwrap = need("bubblewrap", bwrap.ok ? undefined : bwrap.detail, "the runner containment test");

Deno.test({
  name: "real bwrap with these args: the process has the chosen caps, seccomp, its own namespaces, sees only its files",
  ignore: noBwrap !== undefined,
}, async () => {
  const work = await Deno.makeTempDir({ prefix: "krunbox-contain-test-" });
  try {
    const home = join(work, "home");
    const dir = join(home, "sandboxes", "probe");
    const other = join(home, "sandboxes", "other");
    const share = join(work, "share");
    for (const d of [dir, other, share, join(home, "assets")]) await Deno.mkdir(d, { recursive: true });
    await Deno.writeTextFile(join(share, "present"), "yes");
    // The state home's database among them: the runner reports its status through its own directory.
    const canaries = [join(work, "canary"), join(other, "secret"), join(home, "cache-canary"), join(home, "db.sqlite")];
    for (const c of canaries) await Deno.writeTextFile(c, "canary");
    const spec: VmSpec = {
      ...SPEC,
      dir,
      root: { kind: "dir", path: share, upper: join(dir, "upper.ext4") },
      shares: [],
    };
    await Deno.writeTextFile(join(dir, "upper.ext4"), "");
    const host = await containHost({ assets: join(home, "assets") });
    const seccomp = join(dir, "seccomp.bpf");
    const info = join(dir, "contain.json");
    await Deno.writeFile(seccomp, shareFilter());
    // Inside: wait until told (a file the test writes), so the test inspects a live process.
    const go = join(dir, "go");
    const code = `while (true) { try { Deno.statSync(${
      JSON.stringify(go)
    }); break; } catch { await new Promise((r) => setTimeout(r, 20)); } }`;
    const argv = withContainFds(seccomp, info, [bwrap.detail, ...bwrapArgs(spec, host), "--", host.deno, "eval", code]);
    const child = new Deno.Command(argv[0], { args: argv.slice(1), stdout: "piped", stderr: "piped" }).spawn();
    try {
      let pid: number | undefined;
      for (let i = 0; i < 250 && !pid; i++) {
        const m = /"child-pid":\s*(\d+)/.exec(await Deno.readTextFile(info).catch(() => ""));
        if (m) pid = Number(m[1]);
        else await new Promise((r) => setTimeout(r, 20));
      }
      assert(pid, "bwrap wrote the child's pid");
      // Wait for deno to have exec'd (its exe is deno), then look at it from here.
      for (let i = 0; i < 250; i++) {
        if ((await Deno.readLink(`/proc/${pid}/exe`).catch(() => "")) === host.deno) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      assertEquals(await Deno.readLink(`/proc/${pid}/exe`), host.deno);
      const status = await Deno.readTextFile(`/proc/${pid}/status`);
      const field = (name: string) => new RegExp(`^${name}:\\s*(\\S+)`, "m").exec(status)?.[1];
      const uid = Deno.uid() ?? 0;
      assertEquals(BigInt(`0x${field("CapEff")}`), runnerCapMask(uid), status);
      assertEquals(BigInt(`0x${field("CapPrm")}`), runnerCapMask(uid), status);
      assertEquals(field("NoNewPrivs"), "1");
      assertEquals(field("Seccomp"), "2");
      for (const ns of ["mnt", "pid", "ipc", "uts"]) {
        assert((await Deno.readLink(`/proc/${pid}/ns/${ns}`)) !== (await Deno.readLink(`/proc/self/ns/${ns}`)), ns);
      }
      const seen = (p: string) => Deno.lstat(`/proc/${pid}/root${p}`).then(() => true, () => false);
      for (const p of [join(share, "present"), dir, host.deno, "/usr/bin"]) {
        assert(await seen(p), `${p} visible (positive control)`);
      }
      for (const p of [...canaries, "/etc/passwd", "/etc/shadow", "/home"]) assert(!(await seen(p)), `${p} hidden`);
    } finally {
      await Deno.writeTextFile(go, "");
      const out = await child.output();
      assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    }
  } finally {
    await Deno.remove(work, { recursive: true });
  }
});
