/**
 * `SandboxConfig`: the validated, backend-neutral, JSON-serialisable
 * description of a sandbox. The builder produces it, the store persists it
 * (`JSON.stringify` → `parseConfig` round-trips exactly), the runner boots it.
 *
 * @module
 */

import { InvalidConfigError } from "../errors.ts";
import type { BackendChoice } from "../vmm/detect.ts";
import { NETWORK_DEFAULTS, type NetworkConfig, parseNetwork } from "../net/policy.ts";
import { parsePorts, type PortMapping } from "../net/ports.ts";
import { parseSecrets, type SecretConfig } from "../net/secrets.ts";

export type { NetworkConfig, PortMapping, SecretConfig };

/** Where the root filesystem comes from. */
export type ImageSource =
  | { readonly kind: "oci"; readonly reference: string }
  /**
   * A host directory. By default it is read-only to the sandbox, whose writes
   * go to its own upper disk (`rootDiskMib`), so several sandboxes can boot
   * from it and none sees (or plants anything for) another; `writable: true`
   * shares the directory itself read-write: writes reach the host directory
   * and every sandbox using it.
   */
  | { readonly kind: "dir"; readonly path: string; readonly writable?: boolean }
  | { readonly kind: "disk"; readonly path: string; readonly format: "raw" | "qcow2"; readonly fstype: string };

/** A host directory, named volume or tmpfs mounted in the guest. */
export type VolumeMount =
  | { readonly kind: "bind"; readonly guestPath: string; readonly hostPath: string; readonly readonly: boolean }
  | { readonly kind: "named"; readonly guestPath: string; readonly name: string; readonly readonly: boolean }
  | { readonly kind: "tmpfs"; readonly guestPath: string; readonly sizeMib: number; readonly readonly: boolean };

/** A pre-boot edit of the root filesystem. */
export type Patch =
  | { readonly op: "text"; readonly path: string; readonly content: string; readonly mode?: number }
  | { readonly op: "append"; readonly path: string; readonly content: string }
  | { readonly op: "copy"; readonly hostPath: string; readonly path: string }
  | { readonly op: "mkdir"; readonly path: string; readonly mode?: number }
  | { readonly op: "symlink"; readonly target: string; readonly path: string }
  | { readonly op: "remove"; readonly path: string };

/** Log verbosity of the VMM and the guest kernel's console. */
export type LogLevel = "error" | "warn" | "info" | "debug" | "trace";

/** The full configuration of a sandbox. */
export interface SandboxConfig {
  /** Unique sandbox name: 1–63 letters, digits, `_`, `.`, `-` (see {@link validateName}). */
  readonly name: string;
  /** The VMM: `auto` (default), `libkrun` or `qemu`. */
  readonly backend: BackendChoice;
  /** Virtual CPUs, 1–64 (default 1). */
  readonly cpus: number;
  /** Guest memory in MiB, at least 64 (default 512). */
  readonly memoryMib: number;
  /** Where the root filesystem comes from. */
  readonly image: ImageSource;
  /** Environment variables of every process; they override the image's `Env`. */
  readonly env: Readonly<Record<string, string>>;
  /** The image's command, as argv (default: its `Entrypoint` + `Cmd`); `krunbox run` runs it when given none. */
  readonly entrypoint?: readonly string[];
  /** Default working directory of processes (default: the image's `WorkingDir`, else `/`). */
  readonly workdir?: string;
  /** Absolute path of the shell that `Sandbox.shell()` runs (default `/bin/sh`). */
  readonly shell: string;
  /** Default user of processes, name or uid (default: the image's `User`, else root). */
  readonly user?: string | number;
  /** The guest's hostname (default: the sandbox name). */
  readonly hostname?: string;
  /**
   * Start as a fork of the running machine saved by `sb.snapshot(name)`
   * (qemu, OCI image of the same image and shape): its memory, processes and
   * files, with this sandbox's own hostname, env, clock and randomness.
   */
  readonly fromSnapshot?: string;
  /** Scripts by file name, installed executable in `/.msb/scripts` (on PATH). */
  readonly scripts: Readonly<Record<string, string>>;
  /** Edits applied to the root once, at create, before any process runs. */
  readonly patches: readonly Patch[];
  /** Mounts in the guest, in order. */
  readonly volumes: readonly VolumeMount[];
  /** Ports published on the host (network mode `user` only). */
  readonly ports: readonly PortMapping[];
  /** The network: device or none, policy, DNS, limits (default: the `public` profile). */
  readonly network: NetworkConfig;
  /** Secrets: env name, placeholder and allowed hosts; never the value (default none). */
  readonly secrets: readonly SecretConfig[];
  /** Size of the writable root disk of OCI images and directory roots, in MiB (default 4096, sparse). */
  readonly rootDiskMib: number;
  /** Stop after this many seconds without exec or fs calls (default: never). */
  readonly idleTimeoutSecs?: number;
  /** Stop this many seconds after boot (default: never). */
  readonly maxDurationSecs?: number;
  /** Log verbosity of the VMM (libkrun's logger) and of the guest kernel's console (default `warn`). */
  readonly logLevel: LogLevel;
}

/** Defaults of every optional setting. */
export const CONFIG_DEFAULTS = {
  backend: "auto",
  cpus: 1,
  memoryMib: 512,
  env: {},
  shell: "/bin/sh",
  scripts: {},
  patches: [],
  volumes: [],
  ports: [],
  network: NETWORK_DEFAULTS,
  secrets: [],
  rootDiskMib: 4096,
  logLevel: "warn",
} as const satisfies Partial<SandboxConfig>;

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

/** The prefix of a warm pool's internal sandbox names (src/sandbox/pool.ts). */
export const POOL_NAME_PREFIX = ".pool-";
const POOL_NAME_RE = /^\.pool-[0-9a-f]{16}$/;

/**
 * Whether `name` is a warm pool's internal name (`.pool-` and 16 hex
 * digits): never a valid user name (those start with a letter or digit), so
 * pooled sandboxes cannot collide with a user's and `Sandbox.list` hides them.
 *
 * @example
 * ```ts
 * import { isPoolName } from "./config.ts";
 * console.log(isPoolName(".pool-0123456789abcdef"), isPoolName("job-1")); // true false
 * ```
 */
export function isPoolName(name: string): boolean {
  return POOL_NAME_RE.test(name);
}

/**
 * Checks a sandbox name: 1–63 characters of letters, digits, `_`, `.`, `-`,
 * starting with a letter or digit (it becomes a directory name and a hostname).
 *
 * @example
 * ```ts
 * import { validateName } from "./config.ts";
 * validateName("job-1");
 * ```
 */
export function validateName(name: unknown): string {
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    throw new InvalidConfigError(
      "name",
      `${
        JSON.stringify(name)
      } must be 1-63 characters of letters, digits, "_", "." or "-", starting with a letter or digit`,
    );
  }
  return name;
}

function int(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new InvalidConfigError(field, `must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function absPath(field: string, v: unknown): string {
  if (typeof v !== "string" || !v.startsWith("/") || v.includes("\0")) {
    throw new InvalidConfigError(field, `must be an absolute path without NUL bytes, got ${JSON.stringify(v)}`);
  }
  return v;
}

function volume(v: VolumeMount): void {
  absPath("volumes.guestPath", v?.guestPath);
  if (v.guestPath.split("/").includes("..")) throw new InvalidConfigError("volumes.guestPath", "must not contain ..");
  if (typeof v.readonly !== "boolean") throw new InvalidConfigError("volumes.readonly", "must be a boolean");
  switch (v.kind) {
    case "bind":
      absPath("volumes.hostPath", v.hostPath);
      return;
    case "named":
      if (typeof v.name !== "string" || !NAME_RE.test(v.name)) {
        throw new InvalidConfigError(
          "volumes.name",
          `${
            JSON.stringify(v.name)
          } must be 1-63 characters of letters, digits, "_", "." or "-", starting with a letter or digit`,
        );
      }
      return;
    case "tmpfs":
      int("volumes.sizeMib", v.sizeMib, 1, 1 << 20);
      return;
    default:
      throw new InvalidConfigError("volumes.kind", `unknown kind ${JSON.stringify((v as { kind?: unknown }).kind)}`);
  }
}

function strings(field: string, v: unknown): Record<string, string> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new InvalidConfigError(field, "must be an object");
  for (const [k, s] of Object.entries(v)) {
    if (typeof s !== "string" || k.length === 0 || k.includes("\0") || s.includes("\0")) {
      throw new InvalidConfigError(
        field,
        `entry ${JSON.stringify(k)} must be a non-empty key with a string value, no NUL`,
      );
    }
  }
  return v as Record<string, string>;
}

function image(v: unknown): ImageSource {
  const i = v as ImageSource | undefined;
  if (!i || typeof i !== "object") {
    throw new InvalidConfigError("image", "is required (call .image(...) on the builder)");
  }
  switch (i.kind) {
    case "oci":
      if (typeof i.reference !== "string" || i.reference.length === 0) {
        throw new InvalidConfigError("image", "OCI reference must be a non-empty string");
      }
      return { kind: "oci", reference: i.reference };
    case "dir":
      if (i.writable !== undefined && typeof i.writable !== "boolean") {
        throw new InvalidConfigError("image.writable", `must be a boolean, got ${JSON.stringify(i.writable)}`);
      }
      return { kind: "dir", path: absPath("image.path", i.path), ...(i.writable ? { writable: true } : {}) };
    case "disk":
      if (i.format !== "raw" && i.format !== "qcow2") {
        throw new InvalidConfigError("image.format", "must be raw or qcow2");
      }
      return { kind: "disk", path: absPath("image.path", i.path), format: i.format, fstype: i.fstype ?? "ext4" };
    default:
      throw new InvalidConfigError("image", `unknown kind ${JSON.stringify((i as { kind: unknown }).kind)}`);
  }
}

/**
 * Validates a raw object (from the builder or the store) into a
 * `SandboxConfig`, filling defaults. Throws {@link InvalidConfigError} naming
 * the first bad field.
 *
 * @example
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const cfg = parseConfig({ name: "job-1", image: { kind: "dir", path: "/srv/root" } });
 * console.log(cfg.cpus, cfg.memoryMib); // 1 512
 * ```
 */
export function parseConfig(raw: unknown): SandboxConfig {
  if (typeof raw !== "object" || raw === null) throw new InvalidConfigError("config", "must be an object");
  const r = { ...CONFIG_DEFAULTS, ...(raw as Partial<SandboxConfig>) };
  if (!["auto", "libkrun", "qemu"].includes(r.backend)) {
    throw new InvalidConfigError("backend", `must be auto, libkrun or qemu, got ${JSON.stringify(r.backend)}`);
  }
  if (typeof r.shell !== "string" || !r.shell.startsWith("/")) {
    throw new InvalidConfigError("shell", "must be an absolute path");
  }
  if (r.workdir !== undefined) absPath("workdir", r.workdir);
  if (r.hostname !== undefined && !/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/.test(r.hostname)) {
    throw new InvalidConfigError("hostname", `${JSON.stringify(r.hostname)} is not a valid hostname`);
  }
  if (r.fromSnapshot !== undefined && !/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/.test(r.fromSnapshot)) {
    throw new InvalidConfigError("fromSnapshot", `${JSON.stringify(r.fromSnapshot)} is not a snapshot name`);
  }
  if (
    r.user !== undefined &&
    !(typeof r.user === "string" ? /^[a-z_][a-z0-9_-]*\$?$/i.test(r.user) : Number.isInteger(r.user) && r.user >= 0)
  ) {
    throw new InvalidConfigError("user", `${JSON.stringify(r.user)} is not a user name or uid`);
  }
  if (r.entrypoint !== undefined && (!Array.isArray(r.entrypoint) || r.entrypoint.some((s) => typeof s !== "string"))) {
    throw new InvalidConfigError("entrypoint", "must be an array of strings");
  }
  for (const name of Object.keys(strings("scripts", r.scripts))) {
    if (!/^[a-zA-Z0-9_.-]+$/.test(name) || name === "." || name === "..") {
      throw new InvalidConfigError("scripts", `script name ${JSON.stringify(name)} must be a plain file name`);
    }
  }
  const ports = parsePorts(r.ports);
  for (const v of r.volumes) volume(v);
  for (const p of r.patches) {
    if (!["text", "append", "copy", "mkdir", "symlink", "remove"].includes(p?.op)) {
      throw new InvalidConfigError("patches", `unknown op ${JSON.stringify((p as { op?: unknown })?.op)}`);
    }
    absPath("patches.path", p.path);
    if (p.op === "copy") absPath("patches.hostPath", p.hostPath);
    if ((p.op === "text" || p.op === "append") && typeof p.content !== "string") {
      throw new InvalidConfigError("patches.content", "must be a string");
    }
  }
  const network = parseNetwork(r.network);
  const { secrets, env } = parseSecrets(r.secrets, strings("env", r.env));
  if (network.mode === "none" && secrets.length > 0) {
    throw new InvalidConfigError(
      "secrets",
      "a sandbox without a network cannot use secrets; drop disableNetwork() or them",
    );
  }
  if (!["error", "warn", "info", "debug", "trace"].includes(r.logLevel)) {
    throw new InvalidConfigError("logLevel", "unknown level");
  }
  if (r.idleTimeoutSecs !== undefined) int("idleTimeoutSecs", r.idleTimeoutSecs, 1, 31_536_000);
  if (r.maxDurationSecs !== undefined) int("maxDurationSecs", r.maxDurationSecs, 1, 31_536_000);
  return {
    ...r,
    // A pool's internal name only comes from the pool (builders check names with validateName).
    name: typeof r.name === "string" && isPoolName(r.name) ? r.name : validateName(r.name),
    cpus: int("cpus", r.cpus, 1, 64),
    memoryMib: int("memoryMib", r.memoryMib, 64, 1 << 20),
    rootDiskMib: int("rootDiskMib", r.rootDiskMib, 64, 16 << 20),
    image: image(r.image),
    env,
    ports,
    network,
    secrets,
  };
}

/**
 * The guest's hostname: the config's, else the name made a valid label.
 *
 * @example
 * ```ts
 * import { guestHostname, parseConfig } from "./config.ts";
 * console.log(guestHostname(parseConfig({ name: "job_1", image: { kind: "dir", path: "/" } }))); // job-1
 * ```
 */
export function guestHostname(config: SandboxConfig): string {
  return config.hostname ?? config.name.replace(/[^a-zA-Z0-9-]/g, "-").slice(0, 63);
}
