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
import { loadLaunch } from "./handle.ts";
import { applyRootEdits } from "./patches.ts";
import { PhaseClock } from "../util/phases.ts";
import { takePooled } from "./pool.ts";
import { InvalidConfigError, StateError } from "../errors.ts";
import type { PullEvent, PullPolicy } from "../image/pull.ts";
import type { BasicAuth } from "../image/auth.ts";
import type { Sandbox } from "./sandbox.ts";
import { NETWORK_DEFAULTS, NetworkBuilder, parseNetwork } from "../net/policy.ts";
import { DEFAULT_BIND } from "../net/ports.ts";
import { newPlaceholder, SecretBuilder, secretEnv, type SecretSpec, secretSpec } from "../net/secrets.ts";

type Draft = { -readonly [K in keyof SandboxConfig]?: SandboxConfig[K] };

/** How `create()` behaves; not part of the persisted config (credentials never are). */
interface CreateOptions {
  /**
   * The class `create()` returns, given by `Sandbox.builder()`: sandbox.ts
   * imports this module, so this one takes the class instead of importing it
   * back (no import cycle).
   */
  readonly sandbox?: typeof Sandbox;
  readonly replace?: boolean;
  readonly pullPolicy?: PullPolicy;
  readonly auth?: BasicAuth;
  readonly onPull?: (event: PullEvent) => void;
  /** Secrets with their values (memory only: `build()` stores placeholders, never these values). */
  readonly secrets?: readonly SecretSpec[];
}

/** A published port in object form (`port({ host, guest, bind })`). */
export interface PortOptions {
  /** Host port (1–65535). */
  readonly host: number;
  /** Guest port (1–65535). */
  readonly guest: number;
  /** The host address to listen on (default 127.0.0.1). */
  readonly bind?: string;
  /** `tcp` (default) or `udp`. */
  readonly protocol?: "tcp" | "udp";
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
 * const rootfs = await Deno.makeTempDir(); // any unpacked root directory
 * const base = Sandbox.builder("job-1").image(rootfs).memory(256);
 * const config = base.cpus(2).env("MODE", "test").build();
 * console.log(config.cpus, config.memoryMib, config.env.MODE); // 2 256 test
 * // Builders are immutable: `base` kept its default of one CPU.
 * if (config.cpus !== 2 || base.build().cpus !== 1) throw new Error("builder changed");
 * // `await base.create()` validates the same way, then boots the VM (tests/e2e/api_builder_test.ts).
 * ```
 */
export class SandboxBuilder {
  readonly #draft: Readonly<Draft>;
  readonly #opts: CreateOptions;

  /**
   * A builder for a sandbox named `name` (checked at once); use
   * `Sandbox.builder(name)`: a builder made here can `build()` a config but
   * not `create()` one.
   */
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

  /**
   * Starts as a fork of snapshot `name` (`sb.snapshot(name)`): the same
   * image and shape are required (qemu, OCI images); memory, processes and
   * files are the snapshot's, hostname, env, clock and randomness this
   * sandbox's own.
   */
  fromSnapshot(name: string): SandboxBuilder {
    return this.#with({ fromSnapshot: name });
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

  /**
   * Publishes a guest TCP port on 127.0.0.1:host, or, in object form, on the
   * address `bind` says (`{ host, guest, bind, protocol }`). Connections to
   * it are checked against the network's ingress rules.
   *
   * @example
   * ```ts
   * import { Sandbox } from "@krunbox/krunbox";
   * const b = Sandbox.builder("web").image("/srv/root").port(8080, 80).port({ host: 8443, guest: 443, bind: "::1" });
   * ```
   */
  port(host: number, guest: number): SandboxBuilder;
  /** Publishes a guest port as `{ host, guest, bind, protocol }` says (bind default 127.0.0.1, protocol tcp). */
  port(options: PortOptions): SandboxBuilder;
  port(hostOrOptions: number | PortOptions, guest?: number): SandboxBuilder {
    if (typeof hostOrOptions === "object" && hostOrOptions !== null) {
      const o = hostOrOptions;
      return this.#withPort({
        host: o.host,
        guest: o.guest,
        protocol: o.protocol ?? "tcp",
        bind: o.bind ?? DEFAULT_BIND,
      });
    }
    return this.#withPort({ host: hostOrOptions, guest: guest as number, protocol: "tcp", bind: DEFAULT_BIND });
  }

  /** Publishes a guest UDP port on 127.0.0.1:host. */
  portUdp(host: number, guest: number): SandboxBuilder {
    return this.#withPort({ host, guest, protocol: "udp", bind: DEFAULT_BIND });
  }

  #withPort(p: PortMapping): SandboxBuilder {
    return this.#with({ ports: [...(this.#draft.ports ?? []), p] });
  }

  /** No network interface at all (DNS included). A later `network(fn)` turns it back on. */
  disableNetwork(): SandboxBuilder {
    return this.#with({ network: { ...(this.#draft.network ?? NETWORK_DEFAULTS), mode: "none" } });
  }

  /**
   * The network policy, DNS and limits, starting from what this builder has
   * (default: the `public` profile). See {@link NetworkBuilder}.
   *
   * @example
   * ```ts
   * import { Sandbox } from "@krunbox/krunbox";
   * const b = Sandbox.builder("pip").image("python:3.12-slim")
   *   .network((n) => n.policy("none").allow(".pypi.org:tcp:443").allow(".pythonhosted.org:tcp:443"));
   * ```
   */
  network(fn: (n: NetworkBuilder) => NetworkBuilder): SandboxBuilder {
    const n = fn(new NetworkBuilder(parseNetwork(this.#draft.network ?? NETWORK_DEFAULTS)));
    if (!(n instanceof NetworkBuilder)) {
      throw new InvalidConfigError(
        "network",
        "network(fn): fn must return the NetworkBuilder (or one derived from it)",
      );
    }
    return this.#with({ network: n.build() });
  }

  /**
   * A secret: the guest's env holds a placeholder; the engine puts the value
   * only into TLS requests to the allowed hosts. The value is never stored:
   * `Sandbox.start(name)` of a stopped sandbox with secrets throws
   * `SecretUnavailableError` (create it again with `replace()`).
   *
   * @example
   * ```ts
   * import { Sandbox } from "@krunbox/krunbox";
   * const b = Sandbox.builder("agent").image("python:3.12-slim")
   *   .secret((s) => s.env("OPENAI_API_KEY").value("sk-example").allowHost("api.openai.com"));
   * ```
   */
  secret(fn: (s: SecretBuilder) => SecretBuilder): SandboxBuilder {
    return this.#withSecret(secretSpec(fn(new SecretBuilder())));
  }

  /**
   * The short form of {@link secret}: `env` holds a placeholder for `value`, sent only to `host`.
   *
   * @example
   * ```ts
   * import { Sandbox } from "@krunbox/krunbox";
   * const b = Sandbox.builder("gh").image("/srv/root").secretEnv("GITHUB_TOKEN", "ghp_example", "api.github.com");
   * ```
   */
  secretEnv(env: string, value: string, host: string): SandboxBuilder {
    return this.#withSecret(secretEnv(env, value, host));
  }

  #withSecret(spec: SecretSpec): SandboxBuilder {
    const secrets = this.#opts.secrets ?? [];
    if (secrets.some((s) => s.env === spec.env)) {
      throw new InvalidConfigError("secrets.env", `${spec.env} is a secret twice`);
    }
    return this.#withOpts({ secrets: [...secrets, spec] });
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

  /**
   * The validated config this builder describes. Each call gives each
   * secret a new placeholder (the config holds placeholders, never values).
   */
  build(): SandboxConfig {
    const secrets = (this.#opts.secrets ?? []).map(({ value: _value, ...s }) => ({
      ...s,
      placeholder: newPlaceholder(),
    }));
    if (this.#draft.network?.mode === "none" && (this.#draft.ports ?? []).length > 0) {
      throw new InvalidConfigError(
        "ports",
        "a sandbox without a network cannot publish ports; drop disableNetwork() or the ports",
      );
    }
    return parseConfig({ ...this.#draft, secrets });
  }

  /** Creates and boots the sandbox, attached to this process. */
  async create(): Promise<Sandbox> {
    return await this.#create(false);
  }

  /** Creates and boots the sandbox, detached (it outlives this process). */
  async createDetached(): Promise<Sandbox> {
    return await this.#create(true);
  }

  async #boot(
    requested: SandboxConfig,
    detached: boolean,
    replace: boolean,
    sandbox: typeof Sandbox,
    clock: PhaseClock,
  ): Promise<Sandbox> {
    // The secrets' values go to the runner in memory (its stdin), never into the stored config.
    const values = new Map((this.#opts.secrets ?? []).map((s) => [s.env, s.value]));
    const { createAndLaunch } = await loadLaunch();
    const { launched, config } = await createAndLaunch(
      requested,
      detached,
      replace,
      {
        policy: this.#opts.pullPolicy,
        auth: this.#opts.auth,
        onProgress: this.#opts.onPull,
      },
      clock,
      values,
    );
    return sandbox.fromLaunch(config, launched, !detached);
  }

  async #create(detached: boolean): Promise<Sandbox> {
    const clock = new PhaseClock();
    const sandbox = this.#opts.sandbox;
    if (!sandbox) throw new StateError("this builder was made with `new SandboxBuilder`: use `Sandbox.builder(name)`");
    const requested = this.build();
    const replace = this.#opts.replace ?? false;
    // A warm pool of this process serves attached creates of its shape (a pull policy of "always" boots cold).
    const pooled = detached || this.#opts.pullPolicy === "always"
      ? undefined
      : await takePooled(requested, replace, sandbox);
    const sb = pooled ?? await this.#boot(requested, detached, replace, sandbox, clock);
    const config = sb.config();
    try {
      await applyRootEdits(sb.fs(), config);
    } catch (e) {
      await sb.kill().catch(() => {});
      throw e;
    }
    // The root's files and patches (often none): the end of create().
    clock.mark("host.finish");
    return sb;
  }
}
