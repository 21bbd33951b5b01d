/**
 * Debian packages: installing what the host needs, and fetching packages
 * without installing them (the guest kernel, sid's libkrunfw).
 *
 * @module
 */

import { join } from "node:path";
import { runCommand } from "../../util/command.ts";

/** Debian packages the host needs, and why. */
export const HOST_PACKAGES: Readonly<Record<string, string>> = {
  "qemu-system-x86": "qemu backend (qemu-system-x86_64, virtiofsd)",
  "libcap-ng-dev": "building the Rust virtiofsd (qemu shares)",
  "libseccomp-dev": "building the Rust virtiofsd (qemu shares)",
  "e2fsprogs": "per-sandbox writable ext4 disks (mkfs.ext4)",
  "bubblewrap": "libkrun backend: the runner's containment (bwrap: namespaces, capabilities, seccomp)",
  "libisal2": "ISA-L inflate: fast layer decompression for image pulls",
  "libzstd1": "tar+zstd image layers",
  "zstd": "tests: building tar+zstd layers",
  "erofs-utils": "tests: reading image lowers back (fsck.erofs)",
  "busybox-static": "the demo's and tests' busybox root",
  "mmdebstrap": "Debian roots for tests and the nested test host",
  "docker-registry": "the local OCI registry of the tests",
  "skopeo": "building test images",
  "umoci": "building test images",
  "apache2-utils": "htpasswd for the tests' authenticated registry",
  "openssl": "certificates for the tests' token-auth registry",
  "kmod": "depmod, for the guest kernel's module index",
  "lz4": "unpacking the guest kernel into the ELF qemu boots directly",
  "cpio": "tests: reading initramfs archives back",
  "qemu-utils": "tests: qcow2 disk-image roots (qemu-img)",
  "tmux": "tests: the CLI's interactive terminal path",
};

async function installed(pkg: string): Promise<boolean> {
  try {
    const { stdout } = await runCommand("dpkg-query", ["-W", "-f=${Status}", pkg]);
    return stdout.includes("install ok installed");
  } catch {
    return false;
  }
}

/**
 * Installs the packages that are missing (as root), refreshing the package
 * lists once when an install fails on a stale list.
 *
 * @example
 * ```ts
 * import { ensurePackages } from "./apt.ts";
 * await ensurePackages(["e2fsprogs"], console.log);
 * ```
 */
export async function ensurePackages(pkgs: string[], log: (m: string) => void): Promise<void> {
  const missing: string[] = [];
  for (const p of pkgs) if (!(await installed(p))) missing.push(p);
  if (missing.length === 0) {
    log(`all ${pkgs.length} present`);
    return;
  }
  if (Deno.uid() !== 0) {
    throw new Error(`missing Debian packages: ${missing.join(" ")}; run: sudo apt-get install -y ${missing.join(" ")}`);
  }
  log(`installing ${missing.join(" ")}`);
  const install = () =>
    runCommand("apt-get", ["install", "-y", "-q", "--no-install-recommends", ...missing], {
      env: { DEBIAN_FRONTEND: "noninteractive" },
    });
  try {
    await install();
  } catch {
    log("refreshing package lists (apt-get update)");
    await runCommand("apt-get", ["update", "-q"]);
    await install();
  }
}

/**
 * Options for apt calls against another suite without touching the system's
 * configuration (a private sources list, lists and cache directory).
 */
export interface PrivateSource {
  /** Directory for the private lists and cache. */
  readonly dir: string;
  /** One deb822 or one-line sources entry. */
  readonly line: string;
}

function privateOptions(src: PrivateSource): string[] {
  return [
    "-o",
    `Dir::Etc::SourceList=${join(src.dir, "sources.list")}`,
    "-o",
    "Dir::Etc::SourceParts=/dev/null",
    "-o",
    `Dir::State::Lists=${join(src.dir, "lists")}`,
    "-o",
    `Dir::Cache=${join(src.dir, "cache")}`,
    // sid's Release carries a short Valid-Until; the archive key still verifies it.
    "-o",
    "Acquire::Check-Valid-Until=false",
    "-o",
    "Acquire::Languages=none",
  ];
}

/**
 * Prepares a private apt source (downloads only its package lists).
 *
 * @example
 * ```ts ignore
 * // Downloads from Debian; no test runs it: `./dev setup` does (the libkrun step, src/host/provision/libkrun.ts).
 * import { preparePrivateSource } from "./apt.ts";
 * await preparePrivateSource({ dir: "/tmp/sid", line: "deb http://deb.debian.org/debian sid main" });
 * ```
 */
export async function preparePrivateSource(src: PrivateSource): Promise<void> {
  await Deno.mkdir(join(src.dir, "lists", "partial"), { recursive: true });
  await Deno.mkdir(join(src.dir, "cache", "archives", "partial"), { recursive: true });
  await Deno.writeTextFile(join(src.dir, "sources.list"), src.line + "\n");
  await runCommand("apt-get", [...privateOptions(src), "update", "-q"]);
}

/**
 * Runs an apt-cache query; when it fails on a machine whose package lists are
 * missing or stale, refreshes them once (as root) and asks again.
 *
 * @example
 * ```ts
 * import { withFreshLists, candidateVersion } from "./apt.ts";
 * console.log(await withFreshLists(() => candidateVersion("busybox-static"))); // e.g. 1:1.35.0-4+deb12u1+b1
 * ```
 */
export async function withFreshLists<T>(query: () => Promise<T>): Promise<T> {
  try {
    return await query();
  } catch (e) {
    if (Deno.uid() !== 0) throw e;
    await runCommand("apt-get", ["update", "-q"]);
    return await query();
  }
}

/**
 * The candidate version of a package, from the system's lists or a private source.
 *
 * @example
 * ```ts
 * import { candidateVersion } from "./apt.ts";
 * const v = await candidateVersion("busybox-static");
 * console.log(v); // e.g. 1:1.35.0-4+deb12u1+b1 (what this host's package lists offer)
 * if (!/^[0-9]/.test(v)) throw new Error(v);
 * ```
 */
export async function candidateVersion(pkg: string, src?: PrivateSource): Promise<string> {
  const { stdout } = await runCommand("apt-cache", [...(src ? privateOptions(src) : []), "policy", pkg]);
  const v = stdout.match(/Candidate:\s*(\S+)/)?.[1];
  if (!v || v === "(none)") {
    throw new Error(`Debian package ${pkg} has no candidate version; run apt-get update`);
  }
  return v;
}

/**
 * The package a metapackage depends on first (e.g. the versioned kernel).
 *
 * @example
 * ```ts
 * import { firstDependency } from "./apt.ts";
 * const dep = await firstDependency("linux-image-cloud-amd64");
 * console.log(dep); // e.g. linux-image-6.1.0-57-cloud-amd64
 * if (!dep.startsWith("linux-image-")) throw new Error(dep);
 * ```
 */
export async function firstDependency(pkg: string): Promise<string> {
  const { stdout } = await runCommand("apt-cache", ["depends", "--important", pkg]);
  const dep = stdout.match(/Depends:\s*(\S+)/)?.[1];
  if (!dep) throw new Error(`cannot resolve the dependency of ${pkg}`);
  return dep;
}

/**
 * Downloads a package's .deb and unpacks it into `into` (never installs).
 *
 * @example
 * ```ts ignore
 * // Downloads from Debian; no test runs it: `./dev setup` does (the kernel step, src/host/provision/kernel.ts).
 * import { downloadAndUnpack } from "./apt.ts";
 * await downloadAndUnpack("busybox-static", "/tmp/bb");
 * ```
 */
export async function downloadAndUnpack(pkg: string, into: string, src?: PrivateSource): Promise<void> {
  const work = await Deno.makeTempDir({ prefix: "krunbox-deb-" });
  try {
    await runCommand("apt-get", [...(src ? privateOptions(src) : []), "download", "-q", pkg], { cwd: work });
    const debs = [...Deno.readDirSync(work)].filter((e) => e.name.endsWith(".deb"));
    if (debs.length !== 1) throw new Error(`apt-get download ${pkg} gave ${debs.length} files`);
    await runCommand("dpkg-deb", ["-x", join(work, debs[0].name), into]);
  } finally {
    await Deno.remove(work, { recursive: true });
  }
}
