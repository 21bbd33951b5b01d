/**
 * From a sandbox config to what its runner boots: the root (a checked
 * directory or disk image, or an OCI image pulled with the sandbox's upper
 * disk made), the image's defaults under the config, and the backend-neutral
 * {@link VmSpec} the runner reads from `vm.json`.
 *
 * @module
 */

import { join } from "node:path";
import { InvalidConfigError, StateError } from "../errors.ts";
import { type PulledImage, pullImage, type PullOptions } from "../image/pull.ts";
import type { ImageConfig } from "../image/oci.ts";
import { createUpperDisk } from "../image/upper.ts";
import type { Store } from "../store/db.ts";
import { homeLayout } from "../store/home.ts";
import { PRIVATE_DIR_MODE } from "../store/private.ts";
import type { SandboxPaths, VmRoot, VmSpec } from "../vmm/backend.ts";
import { chooseBackend, probeHost } from "../vmm/detect.ts";
import { checkedPrograms, libkrunChecks, qemuChecks } from "../vmm/prereqs.ts";
import { settings } from "../settings.ts";
import { compileNetd, type NetdConfig, QEMU_LINK_MTU } from "../net/engine.ts";
import { guestHostname, parseConfig, type SandboxConfig } from "./config.ts";
import { SCRIPTS_DIR } from "./patches.ts";
import { pathsOf } from "./state.ts";

/** PATH of guest processes; {@link SCRIPTS_DIR} holds the builder's scripts. */
export const GUEST_PATH = `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${SCRIPTS_DIR}`;

/** What a sandbox's root needs at boot, and the image it comes from (OCI). */
export interface PreparedRoot {
  /** The root as the backend sees it. */
  readonly root: VmRoot;
  /** The pulled image, for an OCI root. */
  readonly image?: PulledImage;
}

/**
 * Resolves a config's root: checks a directory or disk image; for an OCI
 * image, pulls it (per `pull.policy`). An OCI image and a directory (unless
 * the caller asked for a shared writable one) get the sandbox's upper disk
 * unless it exists (a restart keeps what the guest wrote).
 *
 * @example
 * ```ts
 * import { openStore } from "../store/open.ts";
 * import { parseConfig } from "./config.ts";
 * import { prepareRoot } from "./spec.ts";
 * import { pathsOf } from "./state.ts";
 * using store = await openStore();
 * const config = parseConfig({ name: "a", image: { kind: "dir", path: "/", writable: true } });
 * console.log((await prepareRoot(store, config, pathsOf("a"), {})).root); // { kind: "dir", path: "/" }
 * ```
 */
export async function prepareRoot(
  store: Store,
  config: SandboxConfig,
  paths: SandboxPaths,
  pull: PullOptions,
): Promise<PreparedRoot> {
  const img = config.image;
  if (img.kind === "oci") {
    const image = await pullImage(store, img.reference, pull);
    await ensureUpperDisk(paths, config.rootDiskMib);
    return { root: { kind: "overlay", lower: image.lower, upper: paths.upperDisk }, image };
  }
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(img.path);
  } catch (cause) {
    throw new InvalidConfigError("image", `${img.path} does not exist`, { cause });
  }
  if (img.kind === "dir") {
    if (!st.isDirectory) throw new InvalidConfigError("image", `${img.path} is not a directory`);
    if (img.writable) return { root: { kind: "dir", path: img.path } };
    // Read-only to the guest, like an OCI lower: its writes go to its own upper disk.
    await ensureUpperDisk(paths, config.rootDiskMib);
    return { root: { kind: "dir", path: img.path, upper: paths.upperDisk } };
  }
  if (!st.isFile) throw new InvalidConfigError("image", `${img.path} is not a disk image file`);
  return { root: { kind: "disk", path: img.path, format: img.format, fstype: img.fstype } };
}

/**
 * Creates the sandbox's upper disk when it has none. One that exists must
 * be a regular file with one link: the VMM opens it read-write as the host
 * (qemu) or binds it (bwrap), so a link a runner planted there
 * (`upper.ext4 -> /etc/shadow`) would hand the guest that file.
 */
async function ensureUpperDisk(paths: SandboxPaths, sizeMib: number): Promise<void> {
  const st = await Deno.lstat(paths.upperDisk).catch(() => undefined);
  if (!st) return await createUpperDisk(paths.upperDisk, sizeMib);
  if (!st.isFile || st.nlink !== 1) {
    throw new StateError(
      `${paths.upperDisk} is not a regular file of this sandbox (a link or another kind): refusing it`,
    );
  }
}

/**
 * The config with the image's defaults under it: the image's Env below the
 * sandbox's env, its WorkingDir, User and Entrypoint/Cmd where the sandbox
 * sets none.
 *
 * @example
 * ```ts
 * import { withImageDefaults } from "./spec.ts";
 * import { parseConfig } from "./config.ts";
 * const cfg = withImageDefaults(parseConfig({ name: "a", image: { kind: "oci", reference: "x" } }), {
 *   config: { Env: ["LANG=C.UTF-8"], WorkingDir: "/app" },
 * });
 * console.log(cfg.workdir); // /app
 * ```
 */
export function withImageDefaults(config: SandboxConfig, image: ImageConfig): SandboxConfig {
  const c = image.config ?? {};
  const env: Record<string, string> = {};
  for (const kv of c.Env ?? []) {
    const eq = kv.indexOf("=");
    if (eq > 0) env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const user = c.User
    ? (/^\d+$/.test(c.User.split(":")[0]) ? Number(c.User.split(":")[0]) : c.User.split(":")[0])
    : undefined;
  const entrypoint = [...(c.Entrypoint ?? []), ...(c.Cmd ?? [])];
  return parseConfig({
    ...config,
    env: { ...env, ...config.env },
    workdir: config.workdir ?? (c.WorkingDir || undefined),
    user: config.user ?? user,
    entrypoint: config.entrypoint ?? (entrypoint.length ? entrypoint : undefined),
  });
}

/** The real path of a volume's host directory (virtiofsd wants a directory, not a link to one). */
async function realDir(path: string): Promise<string> {
  try {
    const real = await Deno.realPath(path);
    if ((await Deno.stat(real)).isDirectory) return real;
  } catch (cause) {
    throw new InvalidConfigError("volumes", `${path} does not exist`, { cause });
  }
  throw new InvalidConfigError("volumes", `${path} is not a directory`);
}

/** The directory of a named volume, created on first use. */
async function namedVolume(name: string): Promise<string> {
  const dir = join(homeLayout().volumes, name);
  await Deno.mkdir(homeLayout().volumes, { recursive: true, mode: PRIVATE_DIR_MODE });
  await Deno.chmod(homeLayout().volumes, PRIVATE_DIR_MODE);
  await Deno.mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  return await Deno.realPath(dir);
}

/**
 * netd's configuration for a networked config (undefined without a
 * network). It never holds a secret value (it is written into `vm.json`):
 * its `secrets` is empty; the runner adds them, with their values, in memory
 * ({@link VmSpec.secrets}). Its `mtu` is the backend's link's: qemu's
 * device advertises {@link QEMU_LINK_MTU}, libkrun's none (1500).
 *
 * @example
 * ```ts
 * import { netdOf } from "./spec.ts";
 * import { parseConfig } from "./config.ts";
 * const cfg = netdOf(parseConfig({ name: "a", image: { kind: "dir", path: "/" } }), "/s/a/net/net.sock");
 * console.log(cfg?.policy.rules.map((r) => r.id)); // ["allow@public"]
 * ```
 */
export function netdOf(
  config: SandboxConfig,
  socket: string,
  backend: "qemu" | "libkrun" = "libkrun",
): NetdConfig | undefined {
  if (config.network.mode !== "user") return undefined;
  return compileNetd({ ...config, secrets: [] }, undefined, {
    socket,
    hostname: guestHostname(config),
    mtu: backend === "qemu" ? QEMU_LINK_MTU : undefined,
  });
}

/**
 * Builds the VM spec of a config (resolving the backend and checking the
 * programs it needs, so a missing one fails here with the doctor's words).
 *
 * @example
 * ```ts
 * import { vmSpecOf } from "./spec.ts";
 * import { parseConfig } from "./config.ts";
 * const spec = await vmSpecOf(parseConfig({ name: "a", image: { kind: "dir", path: "/" } }), { kind: "dir", path: "/" });
 * console.log(spec.backend); // qemu on a host without KVM, else libkrun
 * ```
 */
export async function vmSpecOf(config: SandboxConfig, root: VmRoot): Promise<VmSpec> {
  const host = await probeHost();
  const { backend } = chooseBackend(config.backend, host);
  // Fail fast, in the caller, with the doctor's words.
  const programs = checkedPrograms(backend, backend === "qemu" ? await qemuChecks() : await libkrunChecks());
  const paths = pathsOf(config.name);
  return {
    name: config.name,
    backend,
    cpus: config.cpus,
    memoryMib: config.memoryMib,
    dir: paths.dir,
    root,
    shares: await Promise.all(
      config.volumes.map(async (v, i) =>
        v.kind === "tmpfs" ? [] : [{
          tag: `vol${i}`,
          hostPath: v.kind === "bind" ? await realDir(v.hostPath) : await namedVolume(v.name),
          guestPath: v.guestPath,
          readonly: v.readonly,
        }]
      ),
    ).then((s) => s.flat()),
    ports: config.ports,
    network: config.network.mode,
    netd: netdOf(config, paths.netSocket, backend),
    secrets: config.secrets,
    execDefaults: { user: config.user, workdir: config.workdir },
    boot: {
      hostname: guestHostname(config),
      env: { PATH: GUEST_PATH, HOME: "/root", ...config.env },
      workdir: config.workdir ?? "/",
      rlimits: { nofile: 1048576 },
      mounts: config.volumes.flatMap((v) =>
        v.kind === "tmpfs" ? [{ kind: "tmpfs", target: v.guestPath, sizeMib: v.sizeMib }] : []
      ),
    },
    bootTimeoutMs: settings.bootTimeoutMs(),
    logLevel: config.logLevel,
    // Advanced: extra guest kernel modules (qemu), e.g. "kvm-amd" for a nested test host.
    extraModules: settings.guestModules(),
    idleTimeoutSecs: config.idleTimeoutSecs,
    maxDurationSecs: config.maxDurationSecs,
    programs,
    host,
  };
}
