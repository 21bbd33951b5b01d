/**
 * Secrets: values the guest never sees. The guest's environment holds a
 * per-sandbox random placeholder (`krunbox-secret-<32 hex>`); the engine
 * substitutes the real value only in TLS requests to the secret's allowed
 * hosts and blocks any request that carries the placeholder elsewhere.
 *
 * Where the value lives: in the builder (in memory), then on `netd`'s
 * stdin. The stored config ({@link SecretConfig}: SQLite, `vm.json`) keeps
 * the env name, the placeholder and the hosts, never the value.
 *
 * Restarting: because the value is stored nowhere, `Sandbox.start(name)` (or
 * `handle.start()`) of a stopped sandbox with secrets throws
 * {@link SecretUnavailableError} and leaves the sandbox as it was; create it
 * again (`Sandbox.builder(name).replace()…secret(…).create()`) to give the
 * values again.
 *
 * @module
 */

import { InvalidConfigError, SecretUnavailableError } from "../errors.ts";
import { DEFAULTS } from "../settings.ts";
import { domainProblem } from "./rules.ts";

/** A secret as stored: everything but its value. */
export interface SecretConfig {
  /** The environment variable that holds the placeholder in the guest. */
  readonly env: string;
  /** What the guest sees instead of the value: `krunbox-secret-` + 32 hex digits, new for every sandbox. */
  readonly placeholder: string;
  /** Exact host names the value may be sent to. */
  readonly hosts: readonly string[];
  /** Patterns (`*.example.com`: one label, as in TLS certificates) the value may be sent to. */
  readonly patterns: readonly string[];
  /** Also substitute in HTTP/1 request bodies (default false: headers and Basic auth only). */
  readonly inBody: boolean;
  /** Also substitute in URL query strings (default false). */
  readonly inQuery: boolean;
}

/** A secret with its value, as the builder holds it before the sandbox exists. */
export interface SecretSpec extends Omit<SecretConfig, "placeholder"> {
  /** The real value (memory only). */
  readonly value: string;
}

const ENV_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PLACEHOLDER_RE = /^krunbox-secret-[0-9a-f]{32}$/;

function bad(field: string, detail: string): never {
  throw new InvalidConfigError(field, detail);
}

/**
 * What a rejected argument was, without its text: secret errors never echo
 * what they refuse (it may be the value, passed in the wrong place).
 */
function shape(v: unknown): string {
  return typeof v === "string"
    ? `a string of ${v.length} characters, not shown`
    : `a ${v === null ? "null" : typeof v}`;
}

function envName(v: unknown): string {
  if (typeof v !== "string" || !ENV_RE.test(v) || v.length > 255) {
    bad(
      "secrets.env",
      `the env name (${
        shape(v)
      }) is not an environment variable name: letters, digits and _, not starting with a digit, at most 255 characters`,
    );
  }
  return v;
}

/** The canonical host, or undefined; `qualified` also wants a dot (a TLS server's name: api.example.com). */
function hostName(v: unknown, qualified: boolean): string | undefined {
  const d = typeof v === "string" ? domainProblem(v) : "is not a string";
  if (typeof d === "string" || (qualified && !d.name.includes("."))) return undefined;
  return d.name;
}

/**
 * Checks a secret's host: a DNS name, and with `qualified` (what a caller
 * writes, not what is stored) one with a dot, so that a value passed where
 * the host goes (`sk-…`, `ghp_…` parse as one-label names) is refused.
 */
function host(v: unknown, qualified: boolean): string {
  const name = hostName(v, qualified);
  if (name === undefined) {
    bad(
      "secrets.hosts",
      `a secret's host (${
        shape(v)
      }) is not a fully qualified host name such as api.example.com (letters, digits, - and _ in dot-separated labels; IDNs in punycode)`,
    );
  }
  return name;
}

function pattern(v: unknown): string {
  const rest = typeof v === "string" && v.startsWith("*.") ? hostName(v.slice(2), true) : undefined;
  if (rest === undefined) {
    bad(
      "secrets.patterns",
      `a secret's pattern (${shape(v)}) must be "*.NAME" with at least two labels after the wildcard (*.openai.com)`,
    );
  }
  return `*.${rest}`;
}

/** Refuses a host that is the secret's value (the value would be stored as a host). */
function notTheValue(hostArg: string, v: string | undefined): void {
  if (v !== undefined && (hostArg === v || hostArg.toLowerCase().replace(/\.$/, "") === v.toLowerCase())) {
    bad("secrets.hosts", "a secret's host is its value: the value goes in .value(v), the host in .allowHost(name)");
  }
}

function value(v: unknown, env: string): string {
  if (typeof v !== "string" || v.length === 0) bad("secrets.value", `${env}: the value must be a non-empty string`);
  if (/[\0\r\n]/.test(v)) bad("secrets.value", `${env}: the value must not contain NUL, CR or LF (it goes in headers)`);
  if (new TextEncoder().encode(v).length > DEFAULTS.secretMaxBytes) {
    bad("secrets.value", `${env}: the value is longer than ${DEFAULTS.secretMaxBytes} bytes`);
  }
  return v;
}

/**
 * A fresh placeholder: `krunbox-secret-` and 128 random bits (Web Crypto).
 *
 * @example
 * ```ts
 * import { newPlaceholder } from "./secrets.ts";
 * console.log(newPlaceholder()); // krunbox-secret-3f9c…
 * ```
 */
export function newPlaceholder(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `krunbox-secret-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

interface State {
  readonly env?: string;
  readonly value?: string;
  readonly hosts: readonly string[];
  readonly patterns: readonly string[];
  readonly inBody: boolean;
  readonly inQuery: boolean;
}

// The state lives beside the builder, not on it: nothing that walks the object finds the value.
const STATES = new WeakMap<SecretBuilder, State>();

/**
 * Describes one secret (`SandboxBuilder.secret(fn)`). Immutable: every call
 * returns a new builder. It never prints or serialises its value.
 *
 * @example
 * ```ts
 * import { Sandbox } from "@krunbox/krunbox";
 * const b = Sandbox.builder("agent").image("python:3.12-slim").secret((s) =>
 *   s.env("OPENAI_API_KEY").value(Deno.env.get("OPENAI_API_KEY") ?? "sk-test")
 *     .allowHost("api.openai.com").allowHostPattern("*.openai.com")
 * );
 * ```
 */
export class SecretBuilder {
  /** An empty secret; `SandboxBuilder.secret(fn)` hands one to `fn`. */
  constructor() {
    STATES.set(this, Object.freeze({ hosts: [], patterns: [], inBody: false, inQuery: false }));
  }

  #with(patch: Partial<State>): SecretBuilder {
    const next = new SecretBuilder();
    STATES.set(next, Object.freeze({ ...STATES.get(this)!, ...patch }));
    return next;
  }

  /** The guest environment variable that holds the placeholder. */
  env(name: string): SecretBuilder {
    return this.#with({ env: envName(name) });
  }

  /** The real value (kept in memory only; never stored, logged or shown to the guest). */
  value(v: string): SecretBuilder {
    const s = STATES.get(this)!;
    const checked = value(v, s.env ?? "secret");
    for (const h of s.hosts) notTheValue(h, checked);
    return this.#with({ value: checked });
  }

  /** An exact host the value may be sent to (more than one: call again). */
  allowHost(name: string): SecretBuilder {
    const s = STATES.get(this)!;
    if (typeof name === "string") notTheValue(name, s.value);
    return this.#with({ hosts: [...new Set([...s.hosts, host(name, true)])] });
  }

  /** A pattern `*.example.com` (one label, as in TLS certificates) the value may be sent to. */
  allowHostPattern(p: string): SecretBuilder {
    const s = STATES.get(this)!;
    return this.#with({ patterns: [...new Set([...s.patterns, pattern(p)])] });
  }

  /** Also substitute in HTTP/1 request bodies (off by default). */
  inBody(on = true): SecretBuilder {
    return this.#with({ inBody: on });
  }

  /** Also substitute in URL query strings (off by default). */
  inQuery(on = true): SecretBuilder {
    return this.#with({ inQuery: on });
  }

  /** Never the value. */
  toJSON(): unknown {
    const s = STATES.get(this)!;
    return { env: s.env, value: s.value === undefined ? undefined : "<redacted>", hosts: s.hosts };
  }

  /** Never the value. */
  [Symbol.for("Deno.customInspect")](): string {
    return `SecretBuilder ${JSON.stringify(this.toJSON())}`;
  }
}

/**
 * The finished secret a builder describes (the value included), checked:
 * env and value given, at least one host or pattern.
 *
 * @example
 * ```ts
 * import { SecretBuilder, secretSpec } from "./secrets.ts";
 * const spec = secretSpec(new SecretBuilder().env("K").value("v").allowHost("api.example.com"));
 * console.log(spec.hosts); // ["api.example.com"]
 * ```
 */
export function secretSpec(b: SecretBuilder): SecretSpec {
  const s = b instanceof SecretBuilder ? STATES.get(b) : undefined;
  if (!s) bad("secrets", "secret(fn): fn must return the SecretBuilder it was given (or one derived from it)");
  if (s.env === undefined) bad("secrets.env", "a secret needs .env(NAME)");
  if (s.value === undefined) bad("secrets.value", `${s.env}: a secret needs .value(v)`);
  if (s.hosts.length === 0 && s.patterns.length === 0) {
    bad(
      "secrets.hosts",
      `${s.env}: a secret needs .allowHost(name) or .allowHostPattern("*.name"); with none it can never be sent`,
    );
  }
  return { env: s.env, value: s.value, hosts: s.hosts, patterns: s.patterns, inBody: s.inBody, inQuery: s.inQuery };
}

/**
 * The short form: a secret in `env` sent only to `host`.
 *
 * @example
 * ```ts
 * import { secretEnv } from "./secrets.ts";
 * const spec = secretEnv("GITHUB_TOKEN", "ghp_example", "api.github.com");
 * ```
 */
export function secretEnv(env: string, v: string, allowedHost: string): SecretSpec {
  const name = envName(env);
  if (typeof allowedHost === "string") notTheValue(allowedHost, typeof v === "string" ? v : undefined);
  if (hostName(allowedHost, true) === undefined && hostName(v, true) !== undefined) {
    bad(
      "secrets.hosts",
      `${name}: the host is not a host name but the value looks like one: the arguments look swapped (secretEnv(env, value, host))`,
    );
  }
  return secretSpec(new SecretBuilder().env(name).value(v).allowHost(allowedHost));
}

/**
 * Validates the stored secrets of a config against its env: each env name
 * and placeholder unique, each placeholder well formed, and `env[name]` the
 * placeholder (filled in when absent). Returns the secrets and the env.
 *
 * @example
 * ```ts
 * import { newPlaceholder, parseSecrets } from "./secrets.ts";
 * const s = { env: "K", placeholder: newPlaceholder(), hosts: ["a.example"], patterns: [], inBody: false, inQuery: false };
 * const { env } = parseSecrets([s], {});
 * console.log(env.K === s.placeholder); // true
 * ```
 */
export function parseSecrets(
  raw: unknown,
  env: Readonly<Record<string, string>>,
): { secrets: SecretConfig[]; env: Record<string, string> } {
  if (!Array.isArray(raw)) bad("secrets", "must be an array");
  if (raw.length > DEFAULTS.secretMaxCount) {
    bad("secrets", `has ${raw.length} entries (at most ${DEFAULTS.secretMaxCount})`);
  }
  const out: SecretConfig[] = [];
  const merged = { ...env };
  for (const s of raw as Partial<SecretConfig & { value: unknown }>[]) {
    if (typeof s !== "object" || s === null) bad("secrets", "each secret must be an object");
    const name = envName(s.env);
    if ("value" in s) bad("secrets", `${name}: a stored secret must not carry its value`);
    if (out.some((o) => o.env === name)) bad("secrets.env", `${name} is a secret twice`);
    if (typeof s.placeholder !== "string" || !PLACEHOLDER_RE.test(s.placeholder)) {
      bad("secrets.placeholder", `${name}: must be krunbox-secret- and 32 hex digits`);
    }
    if (out.some((o) => o.placeholder === s.placeholder)) bad("secrets.placeholder", `${name}: placeholder used twice`);
    if (merged[name] !== undefined && merged[name] !== s.placeholder) {
      bad("env", `${name} is set by env() and is also a secret; drop one of them`);
    }
    merged[name] = s.placeholder;
    const hosts = [
      ...new Set(
        (Array.isArray(s.hosts) ? s.hosts : bad("secrets.hosts", "must be an array")).map((h) => host(h, false)),
      ),
    ];
    const patterns = [
      ...new Set((Array.isArray(s.patterns) ? s.patterns : bad("secrets.patterns", "must be an array")).map(pattern)),
    ];
    if (hosts.length === 0 && patterns.length === 0) {
      bad("secrets.hosts", `${name}: needs at least one host or pattern`);
    }
    if (typeof s.inBody !== "boolean" || typeof s.inQuery !== "boolean") {
      bad("secrets", `${name}: inBody and inQuery must be booleans`);
    }
    out.push({ env: name, placeholder: s.placeholder, hosts, patterns, inBody: s.inBody, inQuery: s.inQuery });
  }
  return { secrets: out, env: merged };
}

/**
 * Pairs each stored secret with its value from `values` (env name → value,
 * in memory). A missing value is a {@link SecretUnavailableError}: krunbox
 * never stores values, so a sandbox with secrets cannot be started again
 * from its stored config alone.
 *
 * @example
 * ```ts
 * import { secretValues } from "./secrets.ts";
 * console.log(secretValues("job", [], undefined)); // []
 * ```
 */
export function secretValues(
  sandbox: string,
  secrets: readonly SecretConfig[],
  values: ReadonlyMap<string, string> | undefined,
): { secret: SecretConfig; value: string }[] {
  const missing = secrets.filter((s) => values?.get(s.env) === undefined).map((s) => s.env);
  if (missing.length > 0) throw new SecretUnavailableError(sandbox, missing);
  // Checked again where the value leaves for netd: it goes into HTTP headers.
  return secrets.map((secret) => ({ secret, value: value(values!.get(secret.env), secret.env) }));
}
