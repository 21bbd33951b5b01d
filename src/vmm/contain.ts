/**
 * The libkrun runner's containment. libkrun serves virtiofs from the
 * runner's own process and passes guest names to `openat`, so that process
 * must see nothing but what the VM and the runner need. Deno cannot unshare
 * its mount namespace once it has threads, so the runner is started under
 * bubblewrap (Debian `bubblewrap`, `bwrap`), which builds, before the
 * runner's first instruction:
 *
 * - a private mount namespace on an empty tmpfs root showing only the root
 *   filesystem's directory or disks and the shares (read-only ones bound
 *   read-only: the host kernel enforces them besides libkrun), the sandbox
 *   directory (not the database), the assets (libkrun, libkrunfw, the
 *   agent, netd), the deno binary and the runner's code and module cache
 *   (read-only), `/usr` and a few `/etc` files (read-only), a minimal `/dev`
 *   with `/dev/kvm`, a `/proc` of its own and a tmpfs `/tmp`;
 * - its own pid, ipc, uts and (where possible) cgroup namespaces: the runner
 *   is pid 1 there and can neither see nor signal a host process; a new
 *   session (no `TIOCSTI` into a caller's terminal); it dies with bwrap;
 * - as root, only the capabilities {@link RUNNER_CAPS} (no
 *   `CAP_DAC_READ_SEARCH`, `CAP_SYS_ADMIN`, `CAP_MKNOD`, `CAP_SYS_PTRACE`…),
 *   as an ordinary user a user namespace with none; `no_new_privs` always;
 * - the share filter (src/vmm/seccomp.ts) as `--seccomp`: no setid modes,
 *   no device nodes, no `openat2`/`io_uring`, no other syscall ABI. It is
 *   the filter the qemu runner installs on itself; the runner's own Deno,
 *   libkrun and netd need none of those calls.
 *
 * The network namespace is the host's: netd dials out and listens for
 * published ports there (unix sockets are reached by path, whatever the
 * network namespace).
 *
 * The database is not there: the runner reports its status in its own
 * `status.json` (src/vmm/status_file.ts), which the host parses strictly
 * and merges into that sandbox's row only; and every file the host writes
 * or reads in the sandbox directory is opened without following a link
 * (src/util/nofollow.ts), so what an escaped guest can reach is that
 * directory, the shares and what the runner reads.
 *
 * @module
 */

import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import type { VmSpec } from "./backend.ts";
import { readBounded } from "../util/nofollow.ts";
import { rootDisks } from "./boot_config.ts";

/** The most bytes of bwrap's info file read (it holds a few dozen). */
const INFO_MAX_BYTES = 4096;

/**
 * The capabilities a root runner keeps: what libkrun's virtiofs uses to act
 * as each guest user (`setresuid`/`setresgid` per request), to keep owners
 * (`chown`) and to give guest root root's access to the shared files — the
 * set the qemu path's virtiofsd keeps (`--modcaps=-mknod:-fsetid:-setfcap`).
 * None of them reaches outside the mount namespace; without them libkrun
 * still runs, but a guest user other than root could create nothing on a
 * share, and guest root could not read another user's private files.
 */
export const RUNNER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID"] as const;

/** Linux capability numbers (linux/capability.h) of {@link RUNNER_CAPS}. */
const CAP_NUMBERS: Readonly<Record<(typeof RUNNER_CAPS)[number], number>> = {
  CAP_CHOWN: 0,
  CAP_DAC_OVERRIDE: 1,
  CAP_FOWNER: 3,
  CAP_SETGID: 6,
  CAP_SETUID: 7,
};

/**
 * The `CapEff` mask a contained runner has: {@link RUNNER_CAPS} as root, 0
 * as an ordinary user.
 *
 * @example
 * ```ts
 * import { runnerCapMask } from "./contain.ts";
 * console.log(runnerCapMask(0).toString(16)); // cb
 * ```
 */
export function runnerCapMask(uid: number): bigint {
  if (uid !== 0) return 0n;
  return RUNNER_CAPS.reduce((m, c) => m | (1n << BigInt(CAP_NUMBERS[c])), 0n);
}

/** The descriptor bwrap reads the seccomp program from. */
export const SECCOMP_FD = 3;
/** The descriptor bwrap writes its JSON info (the runner's host pid) to. */
export const INFO_FD = 4;

/** Facts about this host the arguments depend on (gathered by {@link containHost}). */
export interface ContainHost {
  /** The caller's uid: 0 drops capabilities, any other uses a user namespace. */
  readonly uid: number;
  /** The deno executable. */
  readonly deno: string;
  /** The directory of the runner's code when it runs from local files (the package root). */
  readonly code?: string;
  /** Deno's module cache, when there is one: bound read-only as `DENO_DIR`. */
  readonly denoDir?: string;
  /** The state home's assets directory (libkrun, libkrunfw, the agent, netd). */
  readonly assets: string;
  /** Top-level directories that are symlinks on the host (`/bin` → `usr/bin`), else absent. */
  readonly links: Readonly<Record<string, string>>;
}

/** Top-level system directories: bound read-only, or recreated as the host's symlinks. */
const SYSTEM_DIRS = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/** `/etc` files the runner, libc and netd read (dynamic linker cache, DNS, CA roots). */
const ETC_FILES = [
  "/etc/ld.so.cache",
  "/etc/resolv.conf",
  "/etc/hosts",
  "/etc/nsswitch.conf",
  "/etc/gai.conf",
  "/etc/localtime",
  "/etc/ssl",
  "/etc/ca-certificates",
];

/**
 * bwrap's arguments (before `--` and the runner's command) for the runner
 * of `spec`: a pure function of the spec and the host's facts.
 *
 * @example
 * ```ts
 * import { bwrapArgs } from "./contain.ts";
 * const args = bwrapArgs(
 *   { name: "a", backend: "libkrun", cpus: 1, memoryMib: 256, dir: "/h/sandboxes/a", root: { kind: "dir", path: "/r" },
 *     shares: [], ports: [], network: "none", boot: {}, bootTimeoutMs: 30000 },
 *   { uid: 0, deno: "/opt/deno/deno", assets: "/h/assets", links: { "/lib": "usr/lib" } },
 * );
 * console.log(args.includes("--cap-drop")); // true
 * ```
 */
export function bwrapArgs(spec: VmSpec, host: ContainHost): string[] {
  const args: string[] = [];
  const bind = (path: string, readonly: boolean) => args.push(readonly ? "--ro-bind" : "--bind", path, path);
  args.push("--ro-bind", "/usr", "/usr");
  for (const d of SYSTEM_DIRS) {
    const link = host.links[d];
    if (link) args.push("--symlink", link, d);
    else args.push("--ro-bind-try", d, d);
  }
  for (const f of ETC_FILES) args.push("--ro-bind-try", f, f);
  args.push(
    "--ro-bind-try",
    "/sys/devices/system/cpu",
    "/sys/devices/system/cpu",
    "--dev",
    "/dev",
    // -try: where there is none, libkrun's own open names the problem.
    "--dev-bind-try",
    "/dev/kvm",
    "/dev/kvm",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
  );

  // What the guest sees, over the system's view (a share under /tmp is not covered by the tmpfs) and under the
  // runner's own files (a share of a parent of the state home does not cover them); parents before children.
  const guest: [string, boolean][] = [];
  if (spec.root.kind === "dir") guest.push([spec.root.path, spec.root.upper !== undefined]);
  for (const d of rootDisks(spec.root)) guest.push([d.path, d.readonly]);
  for (const s of spec.shares) guest.push([s.hostPath, s.readonly]);
  guest.sort((a, b) => a[0].length - b[0].length);
  for (const [path, readonly] of guest) bind(path, readonly);

  args.push("--ro-bind", dirname(host.deno), dirname(host.deno));
  if (host.code) bind(host.code, true);
  if (host.denoDir) {
    bind(host.denoDir, true);
    args.push("--setenv", "DENO_DIR", host.denoDir);
  } else {
    args.push("--setenv", "DENO_DIR", "/tmp/deno");
  }
  bind(host.assets, true);
  bind(spec.dir, false);

  args.push(
    "--chdir",
    spec.dir,
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--as-pid-1",
    "--die-with-parent",
    "--new-session",
  );
  if (host.uid === 0) {
    args.push("--cap-drop", "ALL");
    for (const c of RUNNER_CAPS) args.push("--cap-add", c);
  } else {
    args.push("--unshare-user");
  }
  args.push("--seccomp", String(SECCOMP_FD), "--info-fd", String(INFO_FD));
  return args;
}

/**
 * A shell command that opens the seccomp program as {@link SECCOMP_FD} and
 * the info file as {@link INFO_FD}, then runs `argv` (bwrap): Deno's spawn
 * cannot hand a child descriptors above 2.
 *
 * @example
 * ```ts
 * import { withContainFds } from "./contain.ts";
 * console.log(withContainFds("/s/seccomp.bpf", "/s/contain.json", ["/usr/bin/bwrap", "--", "true"])[0]); // /bin/sh
 * ```
 */
export function withContainFds(seccompFile: string, infoFile: string, argv: readonly string[]): string[] {
  return [
    "/bin/sh",
    "-c",
    `exec ${SECCOMP_FD}<"$1" ${INFO_FD}>"$2" || exit 70; shift 2; exec "$@"`,
    "sh",
    seccompFile,
    infoFile,
    ...argv,
  ];
}

/**
 * Deno's module cache directory of this process (`DENO_DIR`, else Deno's
 * default under `$HOME`), whether it exists or not; undefined without either.
 *
 * @example
 * ```ts
 * import { denoCacheDir } from "./contain.ts";
 * console.log(typeof (denoCacheDir() ?? "")); // string
 * ```
 */
export function denoCacheDir(): string | undefined {
  return Deno.env.get("DENO_DIR") || (Deno.env.get("HOME") ? `${Deno.env.get("HOME")}/.cache/deno` : undefined);
}

/**
 * The host's facts for {@link bwrapArgs}: this process's uid, deno, the
 * package root (when the runner's code is local), Deno's module cache, the
 * state home's assets, and which top-level directories are symlinks.
 */
export async function containHost(home: { readonly assets: string }): Promise<ContainHost> {
  const runner = new URL("./runner.ts", import.meta.url);
  const links: Record<string, string> = {};
  for (const d of SYSTEM_DIRS) {
    const target = await Deno.readLink(d).catch(() => undefined);
    if (target) links[d] = target;
  }
  const denoDir = denoCacheDir();
  const hasCache = denoDir ? await Deno.stat(denoDir).then((s) => s.isDirectory, () => false) : false;
  return {
    uid: Deno.uid() ?? 0,
    deno: Deno.execPath(),
    code: runner.protocol === "file:" ? fileURLToPath(new URL("../..", runner)) : undefined,
    denoDir: hasCache ? denoDir : undefined,
    assets: home.assets,
    links,
  };
}

/**
 * The runner's pid as the host sees it, from bwrap's info file (inside its
 * pid namespace the runner is pid 1); undefined when the file is absent (an
 * uncontained process).
 *
 * @example
 * ```ts
 * import { containedPid } from "./contain.ts";
 * console.log(await containedPid("/nonexistent/contain.json")); // undefined
 * ```
 */
export async function containedPid(infoFile: string): Promise<number | undefined> {
  // bwrap writes the file after it cloned the runner; a few tries cover a runner that got here first.
  for (let i = 0; i < 50; i++) {
    // Bounded and never through a link (src/util/nofollow.ts).
    let text: string;
    try {
      const bytes = readBounded(infoFile, INFO_MAX_BYTES);
      if (!bytes) return undefined;
      text = new TextDecoder().decode(bytes);
    } catch {
      return undefined;
    }
    const m = /"child-pid":\s*(\d+)/.exec(text);
    if (m) return Number(m[1]);
    await new Promise((r) => setTimeout(r, 20));
  }
  return undefined;
}
