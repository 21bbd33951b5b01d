/**
 * `deno task doctor`: checks every prerequisite, one line each, with the fix
 * for each failure, and says which backend `auto` picks here and why.
 * Exits 0 when at least one backend can run.
 *
 * @module
 */

import { zstdLibrary } from "../../ffi/zstd.ts";
import { isalLibrary } from "../../ffi/isal.ts";
import type { OptionalLibrary } from "../../ffi/load.ts";
import { loadLibkrun } from "../../ffi/load.ts";
import { assetPath } from "../store/assets.ts";
import { homeLayout } from "../store/home.ts";
import { settings } from "../settings.ts";
import { looseEntries } from "../store/private.ts";
import { chooseBackend, type HostVirtualization, probeHost } from "../vmm/detect.ts";
import { type Check, checkAsset, checkBwrap, qemuChecks } from "../vmm/prereqs.ts";
import { sandboxPaths, type VmSpec } from "../vmm/backend.ts";
import { bwrapArgs, containHost, RUNNER_CAPS, runnerCapMask, withContainFds } from "../vmm/contain.ts";
import { shareFilter } from "../vmm/seccomp.ts";
import { virtiofsdArgs } from "../vmm/qemu.ts";
import { which } from "../util/command.ts";
import { join } from "node:path";
import { type FrontDoorConfig, readFrontDoorConfig } from "./provision/front_door.ts";
import { VERSION } from "../version.ts";
import { setupCommand } from "../setup_command.ts";

const MIN_DENO = [2, 9, 0];

function denoCheck(): Check {
  const v = Deno.version.deno.split(".").map(Number);
  const ok = v[0] > MIN_DENO[0] ||
    (v[0] === MIN_DENO[0] && (v[1] > MIN_DENO[1] || (v[1] === MIN_DENO[1] && v[2] >= MIN_DENO[2])));
  return {
    name: "deno",
    ok,
    detail: Deno.version.deno,
    fix: ok ? undefined : `use deno >= ${MIN_DENO.join(".")} (./dev installs it from npm)`,
  };
}

async function homeCheck(): Promise<Check> {
  const { root } = homeLayout();
  try {
    await Deno.mkdir(root, { recursive: true });
    const probe = `${root}/.doctor-${Deno.pid}`;
    await Deno.writeTextFile(probe, "ok");
    await Deno.remove(probe);
    return { name: "state home", ok: true, detail: `${root} (writable)` };
  } catch (e) {
    return {
      name: "state home",
      ok: false,
      detail: `${root}: ${(e as Error).message}`,
      fix: "set KRUNBOX_HOME to a writable directory",
    };
  }
}

/** Whether the state home is private (0700 directories, 0600 files; see src/store/private.ts). */
async function privateHomeCheck(): Promise<Check> {
  const { root } = homeLayout();
  const loose = await looseEntries(root).catch((e: Error) => e);
  if (loose instanceof Error) {
    return { name: "private state home", ok: false, detail: `${root}: ${loose.message}`, fix: "check KRUNBOX_HOME" };
  }
  if (loose.length === 0) return { name: "private state home", ok: true, detail: "directories 0700, files 0600" };
  const first = loose[0];
  return {
    name: "private state home",
    ok: false,
    detail: `${loose.length} entries readable by others, e.g. ${first.path} (${first.from.toString(8)})`,
    fix: "the next krunbox command tightens them (or chmod -R go-rwx the state home)",
  };
}

/** libkrunfw is loaded by libkrun by soname; check it opens on its own. */
function libkrunfwLoadable(): Check {
  const path = assetPath("libkrunfw");
  try {
    Deno.dlopen(path, {}).close();
    return { name: "libkrunfw loads", ok: true, detail: path };
  } catch (e) {
    return {
      name: "libkrunfw loads",
      ok: false,
      detail: (e as Error).message.split("\n")[0],
      fix: `run ${setupCommand()}`,
    };
  }
}

function libkrunLoadable(): Check {
  try {
    using lib = loadLibkrun({ provisioned: assetPath("libkrun") });
    const ctx = lib.symbols.krun_create_ctx();
    if (ctx < 0) {
      return {
        name: "libkrun loads",
        ok: false,
        detail: `krun_create_ctx returned ${ctx}`,
        fix: `rebuild with ${setupCommand()}`,
      };
    }
    lib.symbols.krun_free_ctx(ctx);
    const blk = lib.symbols.krun_has_feature?.(1n) ?? -1;
    return { name: "libkrun loads", ok: true, detail: `krun_create_ctx ok, blk feature ${blk === 1 ? "on" : "off"}` };
  } catch (e) {
    return {
      name: "libkrun loads",
      ok: false,
      detail: (e as Error).message.split("\n")[0],
      fix: `run ${setupCommand()}, or set KRUNBOX_LIBKRUN_PATH`,
    };
  }
}

/** An optional library: without it krunbox works, with `without` as the consequence. */
function libraryCheck(
  name: string,
  library: OptionalLibrary<Deno.ForeignLibraryInterface>,
  use: string,
  without: string,
  debianPackage: string,
): Check {
  if (library.load()) return { name, ok: true, detail: `${library.path} (${use})` };
  return {
    name,
    ok: false,
    detail: `not loadable (${library.errors().join("; ")}); ${without}`,
    fix: `apt-get install ${debianPackage}, or set ${library.envVar} to a ${library.soname}`,
  };
}

/**
 * How qemu's shares are contained here: the virtiofsd version, whether it
 * starts with its namespace sandbox and seccomp as this user (the exact
 * arguments a sandbox uses), and whether this kernel applies the runner's
 * share filter (a child installs it and must be refused `chmod u+s`).
 */
async function shareChecks(virtiofsd: Check): Promise<Check[]> {
  if (!virtiofsd.ok) return [];
  const bin = virtiofsd.detail;
  const who = Deno.uid() === 0 ? "root" : `uid ${Deno.uid()}`;
  const checks: Check[] = [];
  const version = await new Deno.Command(bin, { args: ["--version"], stderr: "piped" }).output()
    .catch((e: Error) => ({ success: false, stdout: new Uint8Array(), stderr: new TextEncoder().encode(e.message) }));
  const text = new TextDecoder().decode(version.success ? version.stdout : version.stderr).trim().split("\n")[0];
  checks.push(
    version.success ? { name: "virtiofsd version", ok: true, detail: text } : {
      name: "virtiofsd version",
      ok: false,
      detail: text,
      fix: `apt-get install libseccomp2 libcap-ng0, or rebuild with ${setupCommand()}`,
    },
  );
  const dir = await Deno.makeTempDir({ prefix: "krunbox-doctor-" });
  try {
    await Deno.mkdir(join(dir, "share"));
    // The exact arguments of a sandbox's share; at log level info virtiofsd says when it is
    // ready, after its sandbox, seccomp filter and capabilities are in place (its socket
    // exists before any of them).
    const args = [
      ...virtiofsdArgs({ tag: "probe", hostPath: join(dir, "share"), readonly: true }, join(dir, "fs.sock")),
      "--log-level=info",
    ];
    const child = new Deno.Command(bin, { args, stdout: "null", stderr: "piped" }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    let stderr = "";
    let listening = false;
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      stderr += chunk;
      if (stderr.includes("Waiting for vhost-user socket connection")) {
        listening = true;
        child.kill("SIGKILL");
      }
    }
    clearTimeout(timer);
    await child.status;
    const features = "--sandbox namespace, --seccomp kill, --readonly" +
      (Deno.uid() === 0
        ? ", --modcaps=-mknod:-fsetid:-setfcap"
        : ", a user namespace with ids squashed to the caller's");
    checks.push(
      listening ? { name: "virtiofsd sandbox", ok: true, detail: `${features} (as ${who})` } : {
        name: "virtiofsd sandbox",
        ok: false,
        detail: `virtiofsd did not start as ${who}: ${stderr.trim().split("\n").slice(-2).join(" / ") || "no socket"}`,
        fix: Deno.uid() === 0
          ? "run where mount, pid and network namespaces can be created (not in a locked-down container)"
          : "allow unprivileged user namespaces (sysctl user.max_user_namespaces=15000; " +
            "kernel.unprivileged_userns_clone=1 where that setting exists)",
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  checks.push(await shareFilterCheck());
  return checks;
}

async function shareFilterCheck(): Promise<Check> {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-doctor-" });
  try {
    await Deno.writeTextFile(join(dir, "f"), "");
    const code = `import { installShareFilter } from ${
      JSON.stringify(new URL("../vmm/seccomp.ts", import.meta.url).href)
    };
installShareFilter();
try { Deno.chmodSync(Deno.args[0], 0o4755); console.log("allowed"); } catch (e) { console.log("refused: " + e.message); }`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=ts", code, join(dir, "f")],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const said = new TextDecoder().decode(out.success ? out.stdout : out.stderr).trim().split("\n").pop() ?? "";
    const refused = out.success && said.startsWith("refused") && said.includes("not permitted");
    return refused
      ? { name: "share filter (seccomp)", ok: true, detail: "refuses setuid/setgid modes and device nodes" }
      : {
        name: "share filter (seccomp)",
        ok: false,
        detail: said || "the probe printed nothing",
        fix: "use a kernel with seccomp filters (CONFIG_SECCOMP_FILTER); qemu shares are not served without it",
      };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * How the libkrun runner is contained here, probed: the runner's own bwrap
 * arguments (src/vmm/contain.ts) for a probe sandbox run `deno eval`, which
 * reports its capabilities, no_new_privs, seccomp mode and whether it sees a
 * file beside its share (it must not) and the share's file (it must).
 */
async function runnerContainmentCheck(): Promise<Check> {
  const name = "libkrun runner";
  const bwrap = await checkBwrap();
  if (!bwrap.ok) return { name, ok: false, detail: bwrap.detail, fix: bwrap.fix };
  const version = await new Deno.Command(bwrap.detail, { args: ["--version"], stdout: "piped", stderr: "null" })
    .output().then((o) => new TextDecoder().decode(o.stdout).trim(), () => "bwrap");
  const dir = await Deno.makeTempDir({ prefix: "krunbox-doctor-" });
  try {
    const sandbox = join(dir, "home", "sandboxes", "probe");
    const share = join(dir, "share");
    for (const d of [sandbox, share, join(dir, "home", "assets")]) await Deno.mkdir(d, { recursive: true });
    await Deno.writeTextFile(join(share, "seen"), "");
    await Deno.writeTextFile(join(dir, "canary"), "");
    const spec: VmSpec = {
      name: "probe",
      backend: "libkrun",
      cpus: 1,
      memoryMib: 128,
      dir: sandbox,
      root: { kind: "dir", path: share },
      shares: [],
      ports: [],
      network: "none",
      boot: {},
      bootTimeoutMs: 1000,
    };
    const host = await containHost({ assets: join(dir, "home", "assets") });
    const paths = sandboxPaths(sandbox);
    await Deno.writeFile(paths.seccompFilter, shareFilter());
    const code = `const s = Deno.readTextFileSync("/proc/self/status");
const f = (n) => s.split(String.fromCharCode(10)).find((l) => l.startsWith(n + ":"))?.split(":")[1].trim();
const seen = (p) => { try { Deno.statSync(p); return true; } catch { return false; } };
console.log(JSON.stringify({ capEff: f("CapEff"), nnp: f("NoNewPrivs"), seccomp: f("Seccomp"),
  canary: seen(${JSON.stringify(join(dir, "canary"))}), share: seen(${JSON.stringify(join(share, "seen"))}) }));`;
    const argv = withContainFds(paths.seccompFilter, paths.containInfo, [
      bwrap.detail,
      ...bwrapArgs(spec, host),
      "--",
      host.deno,
      "eval",
      code,
    ]);
    const out = await new Deno.Command(argv[0], { args: argv.slice(1), stdout: "piped", stderr: "piped" }).output();
    const said = new TextDecoder().decode(out.stdout).trim();
    let probe: { capEff: string; nnp: string; seccomp: string; canary: boolean; share: boolean } | undefined;
    try {
      probe = out.success ? JSON.parse(said) : undefined;
    } catch {
      probe = undefined;
    }
    const mask = runnerCapMask(Deno.uid() ?? 0);
    const good = probe && BigInt(`0x${probe.capEff}`) === mask && probe.nnp === "1" && probe.seccomp === "2" &&
      !probe.canary && probe.share;
    if (!good) {
      const why = probe ? JSON.stringify(probe) : new TextDecoder().decode(out.stderr).trim().split("\n").pop();
      return {
        name,
        ok: false,
        detail: `${version} did not contain the probe as ${who()}: ${why}; no libkrun VM starts without it`,
        fix: Deno.uid() === 0
          ? "run where mount and pid namespaces can be created (not in a locked-down container)"
          : "allow unprivileged user namespaces (sysctl user.max_user_namespaces=15000; " +
            "kernel.unprivileged_userns_clone=1 where that setting exists)",
      };
    }
    const caps = Deno.uid() === 0
      ? `capabilities ${RUNNER_CAPS.map((c) => c.slice(4).toLowerCase()).join(",")} only`
      : "a user namespace, no capabilities";
    return {
      name,
      ok: true,
      detail: `contained by ${version}: own mount, pid, ipc, uts namespaces; ${caps} ` +
        `(CapEff ${probe!.capEff}); no_new_privs; the share filter (seccomp); ` +
        `host files beside its share unseen (probe, as ${who()})`,
    };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** A doctor line: a check, or a warning (`warn`: true, ok) about a limit that is known and not yet fixed. */
type Line = Check & { readonly warn?: boolean };

/** The group that owns /dev/kvm, by name when /etc/group has it. */
async function groupName(gid: number): Promise<string> {
  const groups = await Deno.readTextFile("/etc/group").catch(() => "");
  return groups.split("\n").map((l) => l.split(":")).find((f) => f[2] === String(gid))?.[0] ?? `gid ${gid}`;
}

/** The /dev/kvm line: for a non-root user the fix names the group to join. */
async function kvmCheck(host: HostVirtualization): Promise<Check> {
  if (host.kvmUsable) return { name: "/dev/kvm", ok: true, detail: `opens read-write (as ${who()})` };
  const node = await Deno.stat("/dev/kvm").catch(() => undefined);
  const group = node?.gid == null ? "kvm" : await groupName(node.gid);
  return {
    name: "/dev/kvm",
    ok: false,
    detail: `${host.kvmProblem ?? "unusable"} (as ${who()})`,
    fix: !node
      ? "load kvm_intel or kvm_amd (modprobe)"
      : Deno.uid() === 0
      ? "check the device node (crw-rw---- root:kvm) and any container device policy"
      : group === "root"
      ? "/dev/kvm is root-only here: have root `chgrp kvm /dev/kvm; chmod 660 /dev/kvm` (udev does it), then join the kvm group"
      : `join the ${group} group (usermod -aG ${group} $USER, then log in again)`,
  };
}

function who(): string {
  return Deno.uid() === 0 ? "root" : `uid ${Deno.uid()}`;
}

/**
 * Whether this user can create a user and a mount namespace, tried for real
 * with `unshare` (what virtiofsd's `--sandbox namespace` needs as non-root),
 * next to the kernel's limits that decide it.
 */
async function namespaceCheck(): Promise<Check> {
  const read = (p: string) => Deno.readTextFile(p).then((t) => t.trim(), () => undefined);
  const max = await read("/proc/sys/user/max_user_namespaces");
  const clone = await read("/proc/sys/kernel/unprivileged_userns_clone");
  const limits = `user.max_user_namespaces=${max ?? "absent"}` +
    (clone === undefined ? "" : `, kernel.unprivileged_userns_clone=${clone}`);
  const unshare = await which("unshare", ["/usr/bin", "/bin"]);
  if (!unshare) {
    return {
      name: "user+mount namespaces",
      ok: false,
      detail: `unshare not found; ${limits}`,
      fix: "apt-get install util-linux",
    };
  }
  const out = await new Deno.Command(unshare, {
    args: ["--user", "--map-root-user", "--mount", "true"],
    stderr: "piped",
  })
    .output().catch((e: Error) => ({ success: false, stderr: new TextEncoder().encode(e.message) }));
  if (out.success) {
    return { name: "user+mount namespaces", ok: true, detail: `unshare --user --mount works as ${who()} (${limits})` };
  }
  return {
    name: "user+mount namespaces",
    ok: false,
    detail: `unshare --user --mount fails as ${who()}: ${new TextDecoder().decode(out.stderr).trim()} (${limits})`,
    fix: "sysctl user.max_user_namespaces=15000" +
      (clone === undefined ? "" : " kernel.unprivileged_userns_clone=1"),
  };
}

/** What a non-root user lacks here, by name (root lacks nothing krunbox asks for). */
function privilegeLine(checks: readonly Check[]): Line {
  if (Deno.uid() === 0) return { name: "privileges", ok: true, detail: "root: nothing is lacking" };
  const lacking = checks.filter((c) =>
    !c.ok && ["/dev/kvm", "user+mount namespaces", "virtiofsd sandbox"].includes(c.name)
  )
    .map((c) => c.name);
  const mkfs = checks.find((c) => c.name === "mkfs.ext4");
  const notes = [
    mkfs?.ok ? `mkfs.ext4 found by absolute path (${mkfs.detail})` : "mkfs.ext4 not found",
    "network namespaces not needed (netd serves the network in user space)",
  ];
  return {
    name: "privileges",
    ok: lacking.length === 0,
    detail: `uid ${Deno.uid()} lacks ${lacking.length ? lacking.join(", ") : "nothing"}; ${notes.join("; ")}`,
    fix: lacking.length ? "see the fix under each line named" : undefined,
  };
}

/** What snapshot templates (src/vmm/template.ts) do here: which sandboxes are restored, which boot cold. */
function templatesLine(): Check {
  const dir = homeLayout().templates;
  let n = 0;
  try {
    for (const e of Deno.readDirSync(dir)) if (e.isDirectory && /^[0-9a-f]{32}$/.test(e.name)) n++;
  } catch {
    // none yet
  }
  return {
    name: "snapshot templates",
    ok: true,
    detail: settings.templates()
      ? `qemu: OCI-image sandboxes are restored from a saved VM of their image and shape (${n} in ${dir}); ` +
        "directory roots, volumes and disk images boot cold (virtiofs cannot migrate; a disk image is written " +
        "in place), and so does libkrun (no snapshot API)"
      : "off (KRUNBOX_TEMPLATES=0): every sandbox boots cold",
  };
}

/**
 * The native front door (src/host/provision/front_door.ts): installed, runs
 * (its `--version` is this package's), hands over to a Deno and CLI that
 * exist, and is the `krunbox` a shell finds first. A warning at most: the
 * Deno CLI (`deno task krunbox`, `./dev krunbox`) does everything it does.
 */
async function frontDoorLine(): Promise<Line> {
  const name = "native front door";
  const { bin } = homeLayout();
  const path = join(bin, "krunbox");
  const fix = `run ${setupCommand()} (it installs it)`;
  const warn = (detail: string, fix: string): Line => ({ name, ok: true, warn: true, detail, fix });
  let config: Partial<FrontDoorConfig>;
  try {
    config = await readFrontDoorConfig(bin);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "is missing" : `cannot be read: ${(e as Error).message}`;
    return warn(`not installed: ${join(bin, "krunbox.json")} ${why}`, fix);
  }
  let out: Deno.CommandOutput;
  try {
    // Bounded: a front door that hands --version over (an older krunbox.json) must not hold the doctor.
    out = await new Deno.Command(path, {
      args: ["--version"],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(FRONT_DOOR_PROBE_MS),
    }).output();
  } catch (e) {
    return warn(`${path}: ${(e as Error).message.split("\n")[0]}`, fix);
  }
  const printed = new TextDecoder().decode(out.stdout).trim();
  if (!out.success || printed !== `krunbox ${VERSION}`) {
    return warn(`${path} --version printed "${printed}" (exit ${out.code}), not krunbox ${VERSION}`, fix);
  }
  const gone = (f: string) => Deno.stat(f).then(() => false, () => true);
  const missing: string[] = [];
  for (const f of [config.deno, config.cli?.startsWith("/") ? config.cli : undefined]) {
    if (f !== undefined && await gone(f)) missing.push(f);
  }
  if (!config.deno || missing.length > 0) {
    return warn(`it hands over to ${missing.join(" and ") || "no Deno"}, which is gone`, fix);
  }
  const first = await which("krunbox");
  const same = first !== undefined && await sameFile(first, path);
  if (!same) {
    return warn(
      `${path} works; ${first ? `\`krunbox\` on PATH is ${first}` : `${bin} is not on PATH`}`,
      `put ${bin} first on PATH to run \`krunbox exec\` without starting Deno`,
    );
  }
  return { name, ok: true, detail: `${path} (on PATH), hands over to ${config.deno}` };
}

/** How long the doctor waits for `krunbox --version`. */
const FRONT_DOOR_PROBE_MS = 5_000;

/** Whether two paths name one file (a PATH entry may be a link or end in `/`). */
async function sameFile(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.stat(a), Deno.stat(b)]).catch(() => [undefined, undefined]);
  return x !== undefined && y !== undefined && x.dev === y.dev && x.ino === y.ino;
}

/** Runs the doctor: prints every check; resolves 0 when a backend can run. */
export async function main(): Promise<number> {
  const host = await probeHost();
  const qemu = await qemuChecks();
  const checks: Check[] = [
    denoCheck(),
    await homeCheck(),
    await privateHomeCheck(),
    {
      name: "hardware virtualization",
      ok: host.hardwareFlag !== undefined,
      detail: host.hardwareFlag ? `CPU flag ${host.hardwareFlag}` : "the CPU advertises neither vmx nor svm",
      fix: host.hardwareFlag
        ? undefined
        : "libkrun needs a host with VT-x/AMD-V (or nested virtualization enabled); qemu works without",
    },
    await kvmCheck(host),
    await checkAsset("libkrun"),
    await checkAsset("libkrunfw"),
    libkrunfwLoadable(),
    libkrunLoadable(),
    ...qemu,
    libraryCheck("ISA-L inflate", isalLibrary, "image pulls", "pulls use the slower built-in gunzip", "libisal2"),
    libraryCheck("libzstd", zstdLibrary, "tar+zstd layers", "images with zstd layers cannot be pulled", "libzstd1"),
    templatesLine(),
    await frontDoorLine(),
  ];
  const shares = await shareChecks(qemu.find((c) => c.name === "virtiofsd")!);
  const containment: Line[] = [
    ...shares,
    await namespaceCheck(),
    await runnerContainmentCheck(),
  ];
  containment.push(privilegeLine([...checks, ...containment]));
  const width = Math.max(...[...checks, ...containment].map((c) => c.name.length));
  const print = (c: Line) =>
    console.log(
      `${c.warn ? "warn" : c.ok ? " ok " : "FAIL"}  ${c.name.padEnd(width)}  ${c.detail}${
        (c.ok && !c.warn) || !c.fix ? "" : `\n      ${"".padEnd(width)}  fix: ${c.fix}`
      }`,
    );
  checks.forEach(print);
  console.log("\ncontainment");
  containment.forEach(print);
  const decision = chooseBackend("auto", host);
  console.log(`\nbackend auto → ${decision.backend}: ${decision.reason}`);
  const qemuOk = [...qemu, ...shares].every((c) => c.ok);
  const libkrunOk = checks.find((c) => c.name === "libkrun loads")?.ok && host.hardwareFlag && host.kvmUsable &&
    containment.find((c) => c.name === "libkrun runner")?.ok;
  return qemuOk || libkrunOk ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
