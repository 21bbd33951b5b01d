/**
 * The flags `run` and `create` share, docker's where docker has one, and how
 * they become a {@link SandboxBuilder}: `-e K=V`, `-v host:guest[:ro]` (a
 * bare name is a named volume), `--tmpfs guest[:SIZE]`, `-p
 * [bind:]host:guest[/udp]`, `--cpus`, `--memory` (MiB, or `512m`/`2g`),
 * `-w`, `-u`, `--entrypoint`, `--hostname`, `--network PROFILE`, `--allow
 * RULE`, `--deny RULE`, `--secret-env ENV=VALUE@HOST`, `--no-network`,
 * `--pull`, `--backend`.
 *
 * @example
 * ```ts
 * import { parseCommand } from "./command.ts";
 * import { parsePublish, SANDBOX_OPTIONS } from "./sandbox_flags.ts";
 * const spec = { name: "run", usage: "run image", options: SANDBOX_OPTIONS, commandAfter: 1 };
 * const p = parseCommand(spec, ["-p", "8080:80", "-e", "A=1", "busybox", "sh"]);
 * console.log(parsePublish("8080:80/udp")); // { bind: undefined, host: 8080, guest: 80, udp: true }
 * console.log(p.rest); // ["sh"]
 * ```
 *
 * @module
 */

import { InvalidConfigError } from "../errors.ts";
import type { SandboxBuilder } from "../sandbox/builder.ts";
import type { PullPolicy } from "../image/pull.ts";
import type { BackendChoice } from "../vmm/detect.ts";
import type { Profile } from "../net/policy.ts";
import { type CommandSpec, int, type Options, type Parsed, str, strings } from "./command.ts";

/** The flags of `run` and `create`. */
export const SANDBOX_OPTIONS = {
  name: { type: "string" },
  env: { type: "string", short: "e", multiple: true },
  volume: { type: "string", short: "v", multiple: true },
  tmpfs: { type: "string", multiple: true },
  publish: { type: "string", short: "p", multiple: true },
  cpus: { type: "string" },
  memory: { type: "string", short: "m" },
  workdir: { type: "string", short: "w" },
  user: { type: "string", short: "u" },
  entrypoint: { type: "string" },
  hostname: { type: "string" },
  network: { type: "string", multiple: true },
  allow: { type: "string", multiple: true },
  deny: { type: "string", multiple: true },
  "secret-env": { type: "string", multiple: true },
  "no-network": { type: "boolean" },
  pull: { type: "string" },
  backend: { type: "string" },
} as const satisfies Options;

/** Help lines for {@link SANDBOX_OPTIONS}. */
export const SANDBOX_HELP: Record<string, string> = {
  name: "the sandbox's name (default: a generated one)",
  env: "set an environment variable, KEY=VALUE (repeatable)",
  volume: "mount HOST:GUEST[:ro] (a bare NAME:GUEST is a named volume; repeatable)",
  tmpfs: "mount a tmpfs at GUEST[:SIZE], SIZE in MiB or like 64m (repeatable)",
  publish: "publish a port, [BIND:]HOST:GUEST[/udp] (repeatable)",
  cpus: "virtual CPUs (default 1)",
  memory: "memory in MiB, or like 512m or 2g (default 512)",
  workdir: "working directory of the command",
  user: "user (name or uid) of the command",
  entrypoint: "the command to run when none is given",
  hostname: "the guest's hostname (default: the name)",
  network: "network profile: none, public (default), host, all (repeatable)",
  allow: "allow a destination, e.g. .pypi.org:tcp:443 (repeatable, first match wins)",
  deny: "deny a destination, e.g. 10.0.0.0/8 (repeatable)",
  "secret-env": "a secret ENV=VALUE@HOST (or ENV@HOST: VALUE from krunbox's own $ENV, out of the command line): " +
    "the guest sees a placeholder, HOST gets VALUE",
  "no-network": "no network device at all (DNS included)",
  pull: "when to pull: always, if-missing (default), never",
  backend: "auto (default), libkrun or qemu",
};

/** Memory in MiB from `512`, `512m`, `2g` or `1024M`. */
export function parseMemory(v: string): number {
  const m = /^(\d+)([mMgG]?)[bB]?$/.exec(v.trim());
  if (!m) throw new InvalidConfigError("--memory", `wants MiB or a size like 512m or 2g, got "${v}"`);
  const n = Number(m[1]) * (m[2].toLowerCase() === "g" ? 1024 : 1);
  if (n <= 0) throw new InvalidConfigError("--memory", `must be more than 0, got "${v}"`);
  return n;
}

/** `[bind:]host:guest[/udp|/tcp]`. */
export function parsePublish(v: string): { bind?: string; host: number; guest: number; udp: boolean } {
  const m = /^(?:(.+):)?(\d+):(\d+)(?:\/(tcp|udp))?$/.exec(v);
  if (!m) throw new InvalidConfigError("--publish", `wants [BIND:]HOST:GUEST[/udp], got "${v}"`);
  const port = (s: string) => {
    const n = Number(s);
    if (n < 1 || n > 65535) throw new InvalidConfigError("--publish", `port ${s} is outside 1-65535 in "${v}"`);
    return n;
  };
  const bind = m[1]?.replace(/^\[(.*)\]$/, "$1");
  return { bind, host: port(m[2]), guest: port(m[3]), udp: m[4] === "udp" };
}

/** `HOST:GUEST[:ro|:rw]`; a HOST that is not a path (no `/`, not `.`) is a named volume. */
export function parseVolume(v: string): { source: string; named: boolean; guest: string; readonly: boolean } {
  const parts = v.split(":");
  let readonly = false;
  if (parts.length === 3 && (parts[2] === "ro" || parts[2] === "rw")) {
    readonly = parts.pop() === "ro";
  }
  if (parts.length !== 2 || !parts[0] || !parts[1].startsWith("/")) {
    throw new InvalidConfigError("--volume", `wants HOST:GUEST[:ro] with an absolute GUEST path, got "${v}"`);
  }
  const [source, guest] = parts;
  const named = !source.includes("/") && !source.startsWith(".");
  return { source, named, guest, readonly };
}

/** `GUEST[:SIZE]` with SIZE in MiB or like `64m`. */
export function parseTmpfs(v: string): { guest: string; sizeMib: number } {
  const [guest, size] = v.split(":", 2);
  if (!guest.startsWith("/")) throw new InvalidConfigError("--tmpfs", `wants an absolute guest path, got "${v}"`);
  const s = size?.replace(/^size=/, "");
  return { guest, sizeMib: s ? parseMemory(s) : 64 };
}

/**
 * `ENV=VALUE@HOST`, split at the first `=` and the last `@`; or `ENV@HOST`,
 * the value taken from krunbox's own environment variable ENV, so it is
 * never in a command line (`/proc/PID/cmdline`, shell history).
 */
export function parseSecretEnv(v: string): { env: string; value: string; host: string } {
  const eq = v.indexOf("=");
  const at = v.lastIndexOf("@");
  if (eq < 0 && at > 0 && at < v.length - 1) {
    const env = v.slice(0, at);
    const value = Deno.env.get(env);
    if (value === undefined || value === "") {
      throw new InvalidConfigError("--secret-env", `${env}@HOST takes the value of ${env}, which is not set here`);
    }
    return { env, value, host: v.slice(at + 1) };
  }
  if (eq <= 0 || at < eq + 1 || at === v.length - 1) {
    throw new InvalidConfigError(
      "--secret-env",
      "wants ENV=VALUE@HOST, or ENV@HOST with ENV set in krunbox's environment",
    );
  }
  return { env: v.slice(0, eq), value: v.slice(eq + 1, at), host: v.slice(at + 1) };
}

/** `K=V` (a bare `K` takes the value from krunbox's own environment, as docker does). */
function parseEnv(v: string): [string, string] {
  const eq = v.indexOf("=");
  if (eq === 0) throw new InvalidConfigError("--env", `wants KEY=VALUE, got "${v}"`);
  if (eq < 0) return [v, Deno.env.get(v) ?? ""];
  return [v.slice(0, eq), v.slice(eq + 1)];
}

/** Applies the shared flags of `p` to `b`. */
export function applySandboxFlags(spec: CommandSpec, b: SandboxBuilder, p: Parsed): SandboxBuilder {
  const cpus = int(spec, p, "cpus");
  if (cpus !== undefined) b = b.cpus(cpus);
  const memory = str(p, "memory");
  if (memory !== undefined) b = b.memory(parseMemory(memory));
  for (const e of strings(p, "env")) b = b.env(...parseEnv(e));
  for (const v of strings(p, "volume")) {
    const vol = parseVolume(v);
    b = b.volume(
      vol.guest,
      (c) =>
        vol.named ? c.named(vol.source, { readonly: vol.readonly }) : c.bind(vol.source, { readonly: vol.readonly }),
    );
  }
  for (const t of strings(p, "tmpfs")) {
    const tmp = parseTmpfs(t);
    b = b.volume(tmp.guest, (c) => c.tmpfs(tmp.sizeMib));
  }
  for (const v of strings(p, "publish")) {
    const port = parsePublish(v);
    b = b.port({ host: port.host, guest: port.guest, bind: port.bind, protocol: port.udp ? "udp" : "tcp" });
  }
  const workdir = str(p, "workdir");
  if (workdir !== undefined) b = b.workdir(workdir);
  const user = str(p, "user");
  if (user !== undefined) b = b.user(/^\d+$/.test(user) ? Number(user) : user);
  const entrypoint = str(p, "entrypoint");
  if (entrypoint !== undefined) b = b.entrypoint(entrypoint.split(/\s+/).filter(Boolean));
  const hostname = str(p, "hostname");
  if (hostname !== undefined) b = b.hostname(hostname);
  b = applyNetworkFlags(b, p);
  const pull = str(p, "pull");
  if (pull !== undefined) b = b.pullPolicy(pull as PullPolicy);
  const backend = str(p, "backend");
  if (backend !== undefined) b = b.backend(backend as BackendChoice);
  return b;
}

/** `--network`, `--allow`, `--deny`, `--secret-env`, `--no-network`. */
function applyNetworkFlags(b: SandboxBuilder, p: Parsed): SandboxBuilder {
  const profiles = strings(p, "network");
  const allow = strings(p, "allow");
  const deny = strings(p, "deny");
  const secrets = strings(p, "secret-env");
  if (p.values["no-network"]) {
    const other = [["network", profiles], ["allow", allow], ["deny", deny], ["secret-env", secrets]]
      .find(([, v]) => v.length > 0);
    if (other) throw new InvalidConfigError("--no-network", `cannot be combined with --${other[0]}`);
    return b.disableNetwork();
  }
  if (profiles.length || allow.length || deny.length) {
    b = b.network((n) => {
      let net = profiles.length ? n.policy(...(profiles as Profile[])) : n;
      for (const r of allow) net = net.allow(r);
      for (const r of deny) net = net.deny(r);
      return net;
    });
  }
  for (const s of secrets) {
    const secret = parseSecretEnv(s);
    b = b.secretEnv(secret.env, secret.value, secret.host);
  }
  return b;
}
