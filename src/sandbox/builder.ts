/**
 * `SandboxBuilder`: an immutable builder. Every call returns a new builder,
 * so a half-configured builder can be shared and specialised safely.
 * Validation happens in `create()` (through `parseConfig`), and every
 * mistake is an {@link InvalidConfigError} naming the field.
 *
 * @module
 */

import type { BackendChoice } from "../vmm/detect.ts";
import {
  type ImageSource,
  type LogLevel,
  parseConfig,
  type Patch,
  type PortMapping,
  type SandboxConfig,
  validateName,
  type VolumeMount,
} from "./config.ts";
import { createAndLaunch } from "./lifecycle.ts";
import { InvalidConfigError } from "../errors.ts";
import type { PullEvent, PullPolicy } from "../image/pull.ts";
import type { BasicAuth } from "../image/registry.ts";
import { Sandbox } from "./sandbox.ts";

type Draft = { -readonly [K in keyof SandboxConfig]?: SandboxConfig[K] };

/** How `create()` behaves; not part of the persisted config (credentials never are). */
interface CreateOptions {
  readonly replace?: boolean;
  readonly pullPolicy?: PullPolicy;
  readonly auth?: BasicAuth;
  readonly onPull?: (event: PullEvent) => void;
}

/** Chooses an image source explicitly (`imageWith`). */
export interface ImageChooser {
  /** An OCI image reference. */
  oci(reference: string): ImageSource;
  /**
   * A host directory as the root: read-only to the sandbox, its writes kept
   * on the sandbox's own upper disk; `{ writable: true }` shares the
   * directory itself read-write (writes reach the host and every sandbox
   * booted from it).
   */
  dir(path: string, options?: { writable?: boolean }): ImageSource;
  /** A disk image as the root block device. */
  disk(path: string, options?: { format?: "raw" | "qcow2"; fstype?: string }): ImageSource;
}

const chooser: ImageChooser = {
  oci: (reference) => ({ kind: "oci", reference }),
  dir: (path, o = {}) => ({ kind: "dir", path, ...(o.writable ? { writable: true } : {}) }),
  disk: (path, o = {}) => ({
    kind: "disk",
    path,
    format: o.format ?? (path.endsWith(".qcow2") ? "qcow2" : "raw"),
    fstype: o.fstype ?? "ext4",
  }),
};

/** Pre-boot edits of the root (`patch(fn)`); each returns the patch to apply. */
export interface PatchChooser {
  /** Writes a file with this text (mode default 0644). */
  text(path: string, content: string, mode?: number): Patch;
  /** Appends text to a file (created when missing). */
  append(path: string, content: string): Patch;
  /** Copies a host file or directory tree to `path`. */
  copy(hostPath: string, path: string): Patch;
  /** Creates a directory and its parents. */
  mkdir(path: string, mode?: number): Patch;
  /** Creates a symlink at `path` pointing to `target`. */
  symlink(target: string, path: string): Patch;
  /** Removes a file or a directory tree. */
  remove(path: string): Patch;
}

const patchChooser: PatchChooser = {
  text: (path, content, mode) => ({ op: "text", path, content, mode }),
  append: (path, content) => ({ op: "append", path, content }),
  copy: (hostPath, path) => ({ op: "copy", hostPath, path }),
  mkdir: (path, mode) => ({ op: "mkdir", path, mode }),
  symlink: (target, path) => ({ op: "symlink", target, path }),
  remove: (path) => ({ op: "remove", path }),
};

/** Volume choices (`volume(guestPath, fn)`). */
export interface VolumeChooser {
  /** A host directory. */
  bind(hostPath: string, options?: { readonly?: boolean }): VolumeMount;
  /**
   * A named volume: a directory krunbox keeps under `$KRUNBOX_HOME/volumes/<name>`,
   * created on first use and shared by every sandbox that names it; it outlives them.
   */
  named(name: string, options?: { readonly?: boolean }): VolumeMount;
  /** A tmpfs of the given size. */
  tmpfs(sizeMib: number): VolumeMount;
}

/**
 * Builds a sandbox.
 *
 * @example
 * ```ts
 * import { Sandbox } from "@krunbox/krunbox";
 * const base = Sandbox.builder("job-1").image("/srv/rootfs").memory(256);
 * await using sb = await base.cpus(2).env("MODE", "test").create();
 * ```
 */
export class SandboxBuilder {
  readonly #draft: Readonly<Draft>;
  readonly #opts: CreateOptions;

  /** A builder for a sandbox named `name` (checked at once); use `Sandbox.builder(name)`. */
  constructor(name: string, draft: Draft = {}, opts: CreateOptions = {}) {
    this.#draft = Object.freeze({ ...draft, name: validateName(name) });
    this.#opts = Object.freeze({ ...opts });
  }

  #with(patch: Draft): SandboxBuilder {
    return new SandboxBuilder(this.#draft.name!, { ...this.#draft, ...patch }, this.#opts);
  }

  #withOpts(patch: CreateOptions): SandboxBuilder {
    return new SandboxBuilder(this.#draft.name!, this.#draft, { ...this.#opts, ...patch });
  }

  /** Virtual CPUs (default 1). */
  cpus(n: number): SandboxBuilder {
    return this.#with({ cpus: n });
  }

  /** Memory in MiB (default 512). */
  memory(mib: number): SandboxBuilder {
    return this.#with({ memoryMib: mib });
  }

  /**
   * The root filesystem: an absolute path to a directory, an absolute path to
   * a disk image (`.img`, `.raw`, `.ext4`, `.qcow2`), or an OCI reference.
   */
  image(source: string): SandboxBuilder {
    if (source.startsWith("/")) {
      return this.#with({ image: /\.(img|raw|ext4|qcow2)$/.test(source) ? chooser.disk(source) : chooser.dir(source) });
    }
    return this.#with({ image: chooser.oci(source) });
  }

  /** The root filesystem, chosen explicitly. */
  imageWith(fn: (i: ImageChooser) => ImageSource): SandboxBuilder {
    return this.#with({ image: fn(chooser) });
  }

  /** Size of the writable root disk of OCI images and directory roots, in MiB (default 4096, sparse). */
  rootDiskSize(mib: number): SandboxBuilder {
    return this.#with({ rootDiskMib: mib });
  }

  /** Sets an environment variable for every process. */
  env(key: string, value: string): SandboxBuilder {
    return this.#with({ env: { ...this.#draft.env, [key]: value } });
  }

  /** The image's entrypoint override. */
  entrypoint(cmd: readonly string[]): SandboxBuilder {
    return this.#with({ entrypoint: [...cmd] });
  }

  /** Default working directory of processes. */
  workdir(path: string): SandboxBuilder {
    return this.#with({ workdir: path });
  }

  /** The shell of `shell()` (default /bin/sh). */
  shell(path: string): SandboxBuilder {
    return this.#with({ shell: path });
  }

  /** Default user of processes (name or uid). */
  user(user: string | number): SandboxBuilder {
    return this.#with({ user });
  }

  /** The guest's hostname (default: the sandbox name). */
  hostname(name: string): SandboxBuilder {
    return this.#with({ hostname: name });
  }

  /** A script installed at `/.msb/scripts/<name>`, executable and on PATH. */
  script(name: string, content: string): SandboxBuilder {
    return this.#with({ scripts: { ...this.#draft.scripts, [name]: content } });
  }

  /**
   * Edits the root before any of your code runs in it (applied once, at
   * create, before `create()` returns; kept in the root afterwards).
   */
  patch(fn: (p: PatchChooser) => Patch): SandboxBuilder {
    return this.#with({ patches: [...(this.#draft.patches ?? []), fn(patchChooser)] });
  }

  /** Mounts a host directory, a named volume or a tmpfs at `guestPath`. */
  volume(guestPath: string, fn: (v: VolumeChooser) => VolumeMount): SandboxBuilder {
    const v = fn({
      bind: (hostPath, o = {}) => ({ kind: "bind", guestPath, hostPath, readonly: o.readonly ?? false }),
      named: (name, o = {}) => ({ kind: "named", guestPath, name, readonly: o.readonly ?? false }),
      tmpfs: (sizeMib) => ({ kind: "tmpfs", guestPath, sizeMib, readonly: false }),
    });
    return this.#with({ volumes: [...(this.#draft.volumes ?? []), v] });
  }

  /** Publishes a guest TCP port on 127.0.0.1:host. */
  port(host: number, guest: number): SandboxBuilder {
    return this.#withPort({ host, guest, protocol: "tcp" });
  }

  /** Publishes a guest UDP port on 127.0.0.1:host. */
  portUdp(host: number, guest: number): SandboxBuilder {
    return this.#withPort({ host, guest, protocol: "udp" });
  }

  #withPort(p: PortMapping): SandboxBuilder {
    return this.#with({ ports: [...(this.#draft.ports ?? []), p] });
  }

  /** No network interface at all (DNS included). */
  disableNetwork(): SandboxBuilder {
    return this.#with({ network: { mode: "none" } });
  }

  /** Stop after this many seconds without exec or fs calls. */
  idleTimeout(secs: number): SandboxBuilder {
    return this.#with({ idleTimeoutSecs: secs });
  }

  /** Stop this many seconds after boot. */
  maxDuration(secs: number): SandboxBuilder {
    return this.#with({ maxDurationSecs: secs });
  }

  /** Log verbosity of the runner and VMM. */
  logLevel(level: LogLevel): SandboxBuilder {
    return this.#with({ logLevel: level });
  }

  /** The VMM: `auto` (default), `libkrun` or `qemu`. */
  backend(backend: BackendChoice): SandboxBuilder {
    return this.#with({ backend });
  }

  /** Replace an existing sandbox of the same name (it is killed and removed). */
  replace(): SandboxBuilder {
    return this.#withOpts({ replace: true });
  }

  /** When to contact the registry for an OCI image (default `if-missing`). */
  pullPolicy(policy: PullPolicy): SandboxBuilder {
    if (!["always", "if-missing", "never"].includes(policy)) {
      throw new InvalidConfigError("pullPolicy", `must be always, if-missing or never, got ${JSON.stringify(policy)}`);
    }
    return this.#withOpts({ pullPolicy: policy });
  }

  /** Credentials for the image's registry (used for the pull, never stored). */
  registryAuth(auth: BasicAuth): SandboxBuilder {
    if (auth?.kind !== "basic" || typeof auth.username !== "string" || typeof auth.password !== "string") {
      throw new InvalidConfigError("registryAuth", 'must be { kind: "basic", username, password }');
    }
    return this.#withOpts({ auth });
  }

  /** Receives image pull progress (resolving, per-layer bytes, unpacking, done). */
  onPullProgress(fn: (event: PullEvent) => void): SandboxBuilder {
    return this.#withOpts({ onPull: fn });
  }

  /** The validated config this builder describes. */
  build(): SandboxConfig {
    return parseConfig(this.#draft);
  }

  /** Creates and boots the sandbox, attached to this process. */
  async create(): Promise<Sandbox> {
    return await this.#create(false);
  }

  /** Creates and boots the sandbox, detached (it outlives this process). */
  async createDetached(): Promise<Sandbox> {
    return await this.#create(true);
  }

  async #create(detached: boolean): Promise<Sandbox> {
    const { launched, config } = await createAndLaunch(this.build(), detached, this.#opts.replace ?? false, {
      policy: this.#opts.pullPolicy,
      auth: this.#opts.auth,
      onProgress: this.#opts.onPull,
    });
    const sb = Sandbox.fromLaunch(config, launched, !detached);
    try {
      await applyPatches(sb, config.patches);
      await installScripts(sb, config);
    } catch (e) {
      await sb.kill().catch(() => {});
      throw e;
    }
    return sb;
  }
}

async function applyPatches(sb: Sandbox, patches: readonly Patch[]): Promise<void> {
  const fs = sb.fs();
  for (const p of patches) {
    switch (p.op) {
      case "text":
        await fs.write(p.path, p.content, { mode: p.mode ?? 0o644 });
        break;
      case "append":
        await fs.write(p.path, p.content, { append: true });
        break;
      case "copy":
        await fs.copyFromHost(p.hostPath, p.path);
        break;
      case "mkdir":
        await fs.mkdir(p.path, { mode: p.mode ?? 0o755 });
        break;
      case "symlink":
        await fs.symlink(p.target, p.path);
        break;
      case "remove":
        if (!(await fs.exists(p.path))) break;
        if ((await fs.stat(p.path)).kind === "dir") await fs.removeDir(p.path);
        else await fs.remove(p.path);
        break;
    }
  }
}

async function installScripts(sb: Sandbox, config: SandboxConfig): Promise<void> {
  const names = Object.keys(config.scripts);
  if (names.length === 0) return;
  await sb.fs().mkdir("/.msb/scripts");
  for (const name of names) await sb.fs().write(`/.msb/scripts/${name}`, config.scripts[name], { mode: 0o755 });
}
