/**
 * Prerequisite checks, shared by the doctor (`deno task doctor`), which
 * prints them, and the backends, which turn a failed one into a
 * {@link BackendUnavailableError} carrying the same words and fix.
 *
 * @module
 */

import { setupCommand } from "../setup_command.ts";
import { BackendUnavailableError } from "../errors.ts";
import { type AssetName, assetPath, assetVersion } from "../store/assets.ts";
import { which } from "../util/command.ts";

/** One checked prerequisite. */
export interface Check {
  /** What was checked, e.g. "qemu-system-x86_64". */
  readonly name: string;
  readonly ok: boolean;
  /** What was found (a path, a version) or what is wrong. */
  readonly detail: string;
  /** How to fix it, when not ok. */
  readonly fix?: string;
  /** A program found on the host: `detail` is its path. */
  readonly program?: boolean;
}

/** The fix for anything setup provisions, naming the setup command that exists where krunbox runs. */
const setupFix = (): string => `run ${setupCommand()}`;

/**
 * The layout of the qemu initramfs this code boots, part of its version
 * stamp: `base1` carries a base boot config and the agent that asks the
 * host for the rest. An archive without it would boot an agent that waits
 * for a config nobody sends.
 */
export const INITRAMFS_LAYOUT = "base1";

/**
 * The version stamp of an initramfs built from an agent and a kernel of
 * these versions in this code's {@link INITRAMFS_LAYOUT}: setup writes it
 * (src/host/provision/initramfs.ts), the qemu checks want it exactly, so an
 * archive left by a setup stopped between the agent or kernel and the
 * initramfs, or made for another layout, is stale.
 *
 * @example
 * ```ts
 * import { initramfsVersion } from "./prereqs.ts";
 * console.log(initramfsVersion("src-1", "linux-image-6.1=6.1.1-1")); // "agent-src-1+linux-image-6.1=6.1.1-1+base1"
 * ```
 */
export function initramfsVersion(agent: string, kernel: string): string {
  return `agent-${agent}+${kernel}+${INITRAMFS_LAYOUT}`;
}

/**
 * Why an initramfs stamp is not {@link initramfsVersion}`(agent, kernel)`,
 * part by part (stamps may hold `+` themselves, as Debian versions do, so
 * they are matched as prefixes, never split), or undefined when it is.
 *
 * @example
 * ```ts
 * import { initramfsMismatch } from "./prereqs.ts";
 * console.log(initramfsMismatch("agent-src-1+linux-1+base1", "src-2", "linux-1")); // "it was built with another agent (agent-src-1)"
 * ```
 */
export function initramfsMismatch(stamp: string, agent: string, kernel: string): string | undefined {
  if (stamp === initramfsVersion(agent, kernel)) return undefined;
  const agentPart = `agent-${agent}+`;
  // The agent's own stamps (`src-<hash>`) hold no `+`.
  if (!stamp.startsWith(agentPart)) return `it was built with another agent (${stamp.split("+")[0]})`;
  const rest = stamp.slice(agentPart.length);
  // This layout at the end: what lies between is the kernel's stamp, and it is not the installed one.
  if (rest.endsWith(`+${INITRAMFS_LAYOUT}`)) return "it was built for another kernel than the installed one";
  if (rest === kernel) return `it has an older layout than this krunbox boots (${INITRAMFS_LAYOUT})`;
  if (rest.startsWith(`${kernel}+`)) {
    return `it has layout ${rest.slice(kernel.length + 1)}, this krunbox boots ${INITRAMFS_LAYOUT}`;
  }
  return `it was built for another kernel, in another layout than this krunbox boots (${INITRAMFS_LAYOUT})`;
}

/**
 * Checks one provisioned asset: its file and its version stamp exist.
 *
 * @example
 * ```ts
 * import { checkAsset } from "./prereqs.ts";
 * console.log(await checkAsset("kernel"));
 * ```
 */
export async function checkAsset(name: AssetName, label: string = name): Promise<Check> {
  return await checkAssetVersion(name, label, await assetVersion(name));
}

/** {@link checkAsset} with the stamp already read (`undefined`: none); `stale` says why a stamp will not do. */
async function checkAssetVersion(
  name: AssetName,
  label: string,
  version: string | undefined,
  stale?: (version: string) => string | undefined,
): Promise<Check> {
  const path = assetPath(name);
  const exists = await Deno.stat(path).then(() => true, () => false);
  if (!version || !exists) return { name: label, ok: false, detail: `${path} is missing`, fix: setupFix() };
  const why = stale?.(version);
  if (why) return { name: label, ok: false, detail: `${path} (${version}) is stale: ${why}`, fix: setupFix() };
  return { name: label, ok: true, detail: `${path} (${version})` };
}

/**
 * Checks a program on PATH (or in extra directories).
 *
 * @example
 * ```ts
 * import { checkProgram } from "./prereqs.ts";
 * console.log(await checkProgram("mkfs.ext4", "e2fsprogs"));
 * ```
 */
export async function checkProgram(program: string, debianPackage: string, extraDirs: string[] = []): Promise<Check> {
  const path = await which(program, [...extraDirs, "/usr/sbin", "/sbin"]);
  return path ? { name: program, ok: true, detail: path, program: true } : {
    name: program,
    ok: false,
    detail: "not found",
    fix: `${setupFix()}, or: apt-get install ${debianPackage}`,
  };
}

/**
 * The Rust virtiofsd that serves qemu's shared directories, provisioned by
 * setup (src/host/provision/virtiofsd.ts). Only that one is used: qemu's C
 * virtiofsd cannot enforce a read-only share on the host and needs root, so
 * without the provisioned one no share is served, read-only or not (a
 * read-only volume must never fall back to a writable share).
 *
 * @example
 * ```ts
 * import { checkVirtiofsd } from "./prereqs.ts";
 * console.log(await checkVirtiofsd());
 * ```
 */
export async function checkVirtiofsd(): Promise<Check> {
  const asset = await checkAsset("virtiofsd");
  if (asset.ok) return { name: "virtiofsd", ok: true, detail: assetPath("virtiofsd"), program: true };
  return {
    name: "virtiofsd",
    ok: false,
    detail: `the Rust virtiofsd (crates.io) is not provisioned: ${asset.detail}; ` +
      "qemu shares (read-only ones above all) are served only by it",
    fix: `${setupFix()}; it builds virtiofsd with cargo and needs Debian's libcap-ng-dev and libseccomp-dev`,
  };
}

/**
 * Everything the qemu backend needs.
 *
 * @example
 * ```ts
 * import { qemuChecks } from "./prereqs.ts";
 * for (const c of await qemuChecks()) console.log(c.ok, c.name);
 * ```
 */
export async function qemuChecks(): Promise<Check[]> {
  // Each stamp is read once: the initramfs's must name the installed agent and kernel.
  const [agent, kernel, initramfs] = await Promise.all(
    (["agent", "kernel", "initramfs"] as const).map((a) => assetVersion(a)),
  );
  return await Promise.all([
    checkProgram("qemu-system-x86_64", "qemu-system-x86"),
    checkProgram("setpriv", "util-linux"),
    checkVirtiofsd(),
    checkProgram("mkfs.ext4", "e2fsprogs"),
    checkAssetVersion("kernel", "guest kernel", kernel),
    checkAssetVersion(
      "initramfs",
      "guest initramfs",
      initramfs,
      agent && kernel ? (v) => initramfsMismatch(v, agent, kernel) : undefined,
    ),
    checkAssetVersion("agent", "guest agent", agent),
  ]);
}

/**
 * Everything the libkrun backend needs besides KVM.
 *
 * @example
 * ```ts
 * import { libkrunChecks } from "./prereqs.ts";
 * for (const c of await libkrunChecks()) console.log(c.ok, c.name);
 * ```
 */
export async function libkrunChecks(): Promise<Check[]> {
  return await Promise.all([
    checkAsset("libkrun"),
    checkAsset("libkrunfw"),
    checkAsset("agent", "guest agent"),
    checkBwrap(),
  ]);
}

/**
 * bubblewrap, which contains the libkrun runner (src/vmm/contain.ts):
 * without it no libkrun VM starts.
 *
 * @example
 * ```ts
 * import { checkBwrap } from "./prereqs.ts";
 * console.log(await checkBwrap());
 * ```
 */
export async function checkBwrap(): Promise<Check> {
  const found = await checkProgram("bwrap", "bubblewrap");
  return found.ok ? found : {
    ...found,
    detail: "not found: the libkrun runner serves the guest's files from its own process and runs only inside " +
      "bubblewrap's namespaces (no bwrap, no libkrun VM)",
  };
}

/**
 * Throws the first failed check as a {@link BackendUnavailableError};
 * otherwise returns the paths of the programs checked, by name.
 *
 * @example
 * ```ts
 * import { checkedPrograms, qemuChecks } from "./prereqs.ts";
 * const programs = checkedPrograms("qemu", await qemuChecks());
 * console.log(programs["qemu-system-x86_64"]);
 * ```
 */
export function checkedPrograms(backend: string, checks: readonly Check[]): Record<string, string> {
  requireChecks(backend, checks);
  return Object.fromEntries(checks.filter((c) => c.program).map((c) => [c.name, c.detail]));
}

/**
 * Throws the first failed check as a {@link BackendUnavailableError}.
 *
 * @example
 * ```ts
 * import { qemuChecks, requireChecks } from "./prereqs.ts";
 * requireChecks("qemu", await qemuChecks());
 * ```
 */
export function requireChecks(backend: string, checks: readonly Check[]): void {
  const failed = checks.find((c) => !c.ok);
  if (failed) throw new BackendUnavailableError(backend, `${failed.name}: ${failed.detail}`, failed.fix ?? setupFix());
}
