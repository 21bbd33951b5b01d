/**
 * The doctor's containment section, run for real and checked against the
 * host's own facts: the virtiofsd version it prints is what the binary says,
 * the namespace line agrees with `unshare` run here, the libkrun runner
 * line reports what bubblewrap gave a probe (as root the chosen capabilities,
 * as a user none), and as uid 65534 (`setpriv`, a private home with
 * a copy of the provisioned virtiofsd) the /dev/kvm line fails exactly when
 * that uid cannot open /dev/kvm, with "join the … group" as its fix, and
 * virtiofsd runs with ids squashed instead of root's dropped capabilities.
 *
 * @module
 */

import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "../util/assert.ts";
import { assetDir, assetPath } from "../../src/store/assets.ts";
import { need } from "../util/require.ts";
import { checkBwrap } from "../../src/vmm/prereqs.ts";
import { installFrontDoor } from "../../src/host/provision/front_door.ts";

const doctor = new URL("../../src/host/doctor.ts", import.meta.url).pathname;
const repo = new URL("../../", import.meta.url).pathname;
const NOBODY = 65534;
const virtiofsd = assetPath("virtiofsd");
const haveVirtiofsd = need(
  "qemu",
  await Deno.stat(virtiofsd).then(() => undefined, () => `${virtiofsd} is missing`),
  "doctor containment tests",
) === undefined;
const frontDoor = join(assetDir("agent"), "krunbox");
const haveFrontDoor = need(
  "qemu",
  await Deno.stat(frontDoor).then(() => undefined, () => `${frontDoor} is missing`),
  "doctor front door test",
) === undefined;
const haveSetpriv = await new Deno.Command("setpriv", { args: ["--version"], stdout: "null", stderr: "null" }).output()
  .then((o) => o.success, () => false);
const dec = new TextDecoder();

/** The line of the doctor's output for one check name. */
function line(out: string, name: string): string {
  const found = out.split("\n").find((l) =>
    new RegExp(`^(?: ok |FAIL|warn)  ${name.replace(/[+/]/g, "\\$&")}\\s`).test(l)
  );
  assert(found, `no "${name}" line in:\n${out}`);
  return found;
}

/** The line after `name`'s (its fix), or "". */
function fixOf(out: string, name: string): string {
  const lines = out.split("\n");
  const next = lines[lines.indexOf(line(out, name)) + 1] ?? "";
  return next.trim().startsWith("fix:") ? next.trim() : "";
}

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped", cwd: repo }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test({ name: "doctor: containment lines match this host", ignore: !haveVirtiofsd }, async () => {
  const out = await run(Deno.execPath(), ["run", "-A", doctor], { NO_COLOR: "1" });
  assertMatch(out.stdout, /\ncontainment\n/);
  const version = (await run(virtiofsd, ["--version"])).stdout.trim().split("\n")[0];
  assert(version.length > 0, "virtiofsd --version printed nothing");
  assertMatch(line(out.stdout, "virtiofsd version"), new RegExp(`^ ok  .*  ${version.replace(/\./g, "\\.")}$`));
  const mode = line(out.stdout, "virtiofsd sandbox");
  assertMatch(mode, /--sandbox namespace, --seccomp kill/);
  if (Deno.uid() === 0) assertMatch(mode, /--modcaps=-mknod:-fsetid:-setfcap \(as root\)/);
  const unshare = await run("unshare", ["--user", "--map-root-user", "--mount", "true"]);
  assertEquals(line(out.stdout, "user+mount namespaces").startsWith(" ok "), unshare.code === 0, out.stdout);
  const max = (await Deno.readTextFile("/proc/sys/user/max_user_namespaces")).trim();
  assertMatch(line(out.stdout, "user+mount namespaces"), new RegExp(`user\\.max_user_namespaces=${max}`));
  // The runner line says what bwrap really gave the probe; without bwrap it fails with the package to install.
  const bwrap = await checkBwrap();
  const runner = line(out.stdout, "libkrun runner");
  if (bwrap.ok) {
    assertMatch(runner, /^ ok .*contained by bubblewrap [\d.]+: own mount, pid, ipc, uts namespaces/);
    if (Deno.uid() === 0) {
      assertMatch(runner, /capabilities chown,dac_override,fowner,setgid,setuid only \(CapEff 0+cb\)/);
    }
  } else {
    assert(runner.startsWith("FAIL"), runner);
    assertMatch(fixOf(out.stdout, "libkrun runner"), /apt-get install bubblewrap/);
  }
  const kvm = await Deno.open("/dev/kvm", { read: true, write: true }).then((f) => (f.close(), true), () => false);
  assertEquals(line(out.stdout, "/dev/kvm").startsWith(" ok "), kvm, out.stdout);
});

Deno.test({
  name: "doctor as uid 65534: names what it lacks (/dev/kvm: join the group)",
  ignore: Deno.uid() !== 0 || !haveSetpriv || !haveVirtiofsd,
}, async () => {
  const parent = await Deno.makeTempDir({ prefix: "krunbox-doctor-test-" });
  try {
    await Deno.chmod(parent, 0o755);
    const home = join(parent, "home");
    const denoDir = join(parent, "deno-dir");
    const bin = join(parent, "bin");
    for (const d of [home, denoDir, bin]) await Deno.mkdir(d);
    // The provisioned virtiofsd, copied into nobody's private home so the share lines run as nobody.
    await Deno.mkdir(join(home, "assets", "virtiofsd"), { recursive: true });
    for (const f of ["virtiofsd", "VERSION"]) {
      await Deno.copyFile(join(assetPath("virtiofsd"), "..", f), join(home, "assets", "virtiofsd", f));
    }
    await Deno.chmod(join(home, "assets", "virtiofsd", "virtiofsd"), 0o755);
    const deno = join(bin, "deno");
    await Deno.copyFile(Deno.execPath(), deno);
    await Deno.chmod(deno, 0o755);
    for (const d of [home, join(home, "assets"), join(home, "assets", "virtiofsd"), denoDir]) {
      await Deno.chown(d, NOBODY, NOBODY);
    }
    const env = {
      KRUNBOX_HOME: home,
      DENO_DIR: denoDir,
      HOME: denoDir,
      NO_COLOR: "1",
      PATH: Deno.env.get("PATH") ?? "",
    };
    const asNobody = (...args: string[]) =>
      run("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", ...args], env);
    const out = await asNobody(deno, "run", "-A", doctor);
    assertMatch(out.stdout, /\ncontainment\n/, out.stderr);
    // Positive control for the kvm line: the same uid's own attempt to open /dev/kvm.
    const open = await asNobody(
      deno,
      "eval",
      `try { Deno.openSync("/dev/kvm", { read: true, write: true }).close(); console.log("open"); } catch { console.log("denied"); }`,
    );
    const kvmLine = line(out.stdout, "/dev/kvm");
    assertMatch(kvmLine, /\(as uid 65534\)/);
    if (open.stdout.trim() === "open") assert(kvmLine.startsWith(" ok "), kvmLine);
    else {
      assertEquals(open.stdout.trim(), "denied", open.stderr);
      assert(kvmLine.startsWith("FAIL"), kvmLine);
      assertMatch(fixOf(out.stdout, "/dev/kvm"), /join the \S+ group/);
      assertMatch(line(out.stdout, "privileges"), /uid 65534 lacks .*\/dev\/kvm/);
    }
    assertMatch(line(out.stdout, "privileges"), /mkfs\.ext4 found by absolute path \(\/\S+\)/);
    const version = (await run(virtiofsd, ["--version"])).stdout.trim().split("\n")[0];
    assertMatch(line(out.stdout, "virtiofsd version"), new RegExp(`${version.replace(/\./g, "\\.")}$`));
    const unshare = await asNobody("unshare", "--user", "--map-root-user", "--mount", "true");
    assertEquals(line(out.stdout, "user+mount namespaces").startsWith(" ok "), unshare.code === 0, out.stdout);
    const mode = line(out.stdout, "virtiofsd sandbox");
    assertMatch(mode, /ids squashed to the caller's \(as uid 65534\)/);
    assert(!mode.includes("--modcaps"), mode);
    // The runner as an ordinary user: a user namespace, no capabilities at all (or the fix when it cannot).
    const runner = line(out.stdout, "libkrun runner");
    if ((await checkBwrap()).ok && unshare.code === 0) {
      assertMatch(runner, /^ ok .*a user namespace, no capabilities \(CapEff 0+\).*as uid 65534/);
    }
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
});

Deno.test({
  name: "doctor: the front door line says whether the `krunbox` on PATH is it, and when its Deno is gone",
  ignore: !haveFrontDoor,
}, async () => {
  const home = await Deno.makeTempDir({ prefix: "krunbox-doctor-door-" });
  try {
    // The provisioned assets (the front door among the agent's), shared read-only with this private home.
    await Deno.symlink(join(assetDir("agent"), ".."), join(home, "assets"));
    const door = await installFrontDoor(home);
    const bin = join(home, "bin");
    const others = (Deno.env.get("PATH") ?? "").split(":").filter((d) => d !== bin).join(":");
    const doctorWith = async (path: string) =>
      (await run(Deno.execPath(), ["run", "-A", doctor], { KRUNBOX_HOME: home, NO_COLOR: "1", PATH: path })).stdout;
    // Positive control: installed, first on PATH, its --version this package's.
    const first = await doctorWith(`${bin}:${others}`);
    assertMatch(line(first, "native front door"), new RegExp(`^ ok .*${door} \\(on PATH\\), hands over to /`));
    const off = await doctorWith(others);
    assertMatch(line(off, "native front door"), /^warn .*(is not on PATH|`krunbox` on PATH is \/)/);
    assertMatch(fixOf(off, "native front door"), new RegExp(`put ${bin} first on PATH`));
    // Its krunbox.json names a Deno that is gone: every command it hands over would fail.
    await Deno.writeTextFile(
      join(bin, "krunbox.json"),
      JSON.stringify({ ...JSON.parse(await Deno.readTextFile(join(bin, "krunbox.json"))), deno: "/nonexistent/deno" }),
    );
    const gone = await doctorWith(`${bin}:${others}`);
    assertMatch(line(gone, "native front door"), /^warn .*\/nonexistent\/deno, which is gone/);
    assertMatch(fixOf(gone, "native front door"), /dev setup/);
    // Not installed at all: a warning with the fix, and every other line still printed (it crashed the doctor once).
    await Deno.remove(bin, { recursive: true });
    const none = await doctorWith(others);
    assertMatch(line(none, "native front door"), /^warn .*not installed: .*krunbox\.json is missing/);
    assertMatch(fixOf(none, "native front door"), /dev setup` \(it installs it\)/);
    assertMatch(none, /\nbackend auto → /);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});
