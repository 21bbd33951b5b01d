/**
 * The network section of a sandbox: profiles, rules, DNS, limits and TLS
 * settings, the immutable {@link NetworkBuilder} that writes it, and
 * {@link parseNetwork}, which validates it (from the builder or the store).
 *
 * Order of decisions (the engine applies it): the sandbox's own rules, first
 * match wins; then the rules of its profiles, in the order given; then deny.
 *
 * | profile  | rules it adds      | reaches |
 * | -------- | ------------------ | ------- |
 * | `none`   | (none)             | nothing (DNS answers only `dns.hosts`) |
 * | `public` | `allow@public`     | the internet; nothing of the host, the LAN or cloud metadata (default) |
 * | `host`   | `allow@host`       | the host's own addresses and `host.krunbox.internal` (→ host loopback); alone, no DNS beyond `dns.hosts` |
 * | `all`    | `allow@any`        | everything, host and LAN included |
 *
 * DNS names are forwarded upstream only under a rule that can reach them
 * on the internet: a domain/suffix rule for the name, `allow@any` or
 * `allow@public` (netd/PROTOCOL.md "Decisions"); address rules alone
 * (CIDRs, `host`, `private`) forward no name.
 *
 * An allowlist is `policy("none")` plus `allow` rules; without a `policy()`
 * call the profile is `public`, and `allow`/`deny` rules are exceptions to it.
 *
 * @module
 */

import { InvalidConfigError } from "../errors.ts";
import { DEFAULTS } from "../settings.ts";
import { canonicalIp } from "./ip.ts";
import { domainProblem, formatRule, HOST_NAME, parseRule, type Rule, type RuleInit, type RuleSpec } from "./rules.ts";

/** A named set of rules (see the module's table). */
export type Profile = "none" | "public" | "host" | "all";

/** Every profile. */
export const PROFILES: readonly Profile[] = ["none", "public", "host", "all"];

/** The rules each profile adds after the sandbox's own. */
export const PROFILE_RULES: Readonly<Record<Profile, readonly string[]>> = {
  none: [],
  public: ["allow@public"],
  host: ["allow@host"],
  all: ["allow@any"],
};

/** Names the engine answers itself, and the resolvers it asks for the rest. */
export interface DnsConfig {
  /** Fixed answers: name → IP address (like `--add-host`). */
  readonly hosts: Readonly<Record<string, string>>;
  /** Resolvers as `ip:port` / `[ipv6]:port`; empty: the host's (`/etc/resolv.conf`). */
  readonly upstream: readonly string[];
}

/** TLS interception settings (used only by a sandbox with secrets). */
export interface TlsConfig {
  /** Ports whose TLS is intercepted (default 443). */
  readonly ports: readonly number[];
  /** Exact names never intercepted (clients that pin certificates); they never get a secret. */
  readonly bypass: readonly string[];
}

/** The network of a sandbox, as stored. */
export interface NetworkConfig {
  /** `none`: no network device at all (DNS included); `user`: a device behind the policy engine. */
  readonly mode: "none" | "user";
  /** The profiles, in order (default `["public"]`). */
  readonly profiles: readonly Profile[];
  /** The sandbox's own rules, first match wins, before the profiles'. */
  readonly rules: readonly Rule[];
  /** DNS answers and resolvers. */
  readonly dns: DnsConfig;
  /** Concurrent guest flows (TCP + UDP); over it a new flow is refused (default 256). */
  readonly maxConnections: number;
  /** Extra root certificates (PEM, one each) for checking upstream TLS. */
  readonly trustCa: readonly string[];
  /** TLS interception ports and bypass list. */
  readonly tls: TlsConfig;
}

/** The network of a sandbox nobody configured: the `public` profile. */
export const NETWORK_DEFAULTS: NetworkConfig = Object.freeze({
  mode: "user",
  profiles: Object.freeze(["public"]) as readonly Profile[],
  rules: Object.freeze([]) as readonly Rule[],
  dns: Object.freeze({ hosts: Object.freeze({}), upstream: Object.freeze([]) as readonly string[] }),
  maxConnections: DEFAULTS.netMaxConnections,
  trustCa: Object.freeze([]) as readonly string[],
  tls: Object.freeze({ ports: DEFAULTS.netTlsPorts, bypass: Object.freeze([]) as readonly string[] }),
});

function bad(field: string, detail: string): never {
  throw new InvalidConfigError(field, detail);
}

function list(field: string, v: unknown, max: number): readonly unknown[] {
  if (!Array.isArray(v)) bad(field, "must be an array");
  if (v.length > max) bad(field, `has ${v.length} entries (at most ${max})`);
  return v;
}

function profilesOf(v: unknown): Profile[] {
  const ps = list("network.profiles", v, PROFILES.length);
  for (const p of ps) {
    if (!(PROFILES as readonly unknown[]).includes(p)) {
      bad("network.profiles", `unknown profile ${JSON.stringify(p)} (none, public, host or all)`);
    }
  }
  const out = [...new Set(ps as Profile[])];
  if (out.length === 0) bad("network.profiles", 'needs at least one profile (use "none" for no access)');
  if (out.includes("none") && out.length > 1) bad("network.profiles", '"none" cannot be combined with other profiles');
  return out;
}

/**
 * Parses a resolver address: `ip`, `ip:port`, `[ipv6]` or `[ipv6]:port`
 * (port default 53), returned as `ip:port` / `[ipv6]:port`.
 *
 * @example
 * ```ts
 * import { parseUpstream } from "./policy.ts";
 * console.log(parseUpstream("127.0.0.53"), parseUpstream("[::1]:5353")); // 127.0.0.53:53 [::1]:5353
 * ```
 */
export function parseUpstream(v: unknown): string {
  const field = "network.dns.upstream";
  if (typeof v !== "string") bad(field, `${JSON.stringify(v)} must be a string "ip[:port]"`);
  let host = v, port = "53";
  const m = /^\[([^\]]*)\](?::(.*))?$/.exec(v);
  if (m) {
    host = m[1];
    port = m[2] ?? "53";
  } else if (!canonicalIp(v)) {
    const colon = v.lastIndexOf(":");
    if (colon > 0 && !v.slice(0, colon).includes(":")) [host, port] = [v.slice(0, colon), v.slice(colon + 1)];
  }
  const ip = canonicalIp(host);
  if (!ip) {
    bad(field, `${JSON.stringify(v)} is not "ip[:port]" (an IPv6 address with a port goes in brackets: [::1]:53)`);
  }
  if (!/^[1-9]\d{0,4}$/.test(port) || Number(port) > 65535) bad(field, `${JSON.stringify(v)}: port must be 1-65535`);
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

function dnsOf(v: unknown): DnsConfig {
  if (typeof v !== "object" || v === null || Array.isArray(v)) bad("network.dns", "must be an object");
  const d = v as { hosts?: unknown; upstream?: unknown };
  const hostsIn = d.hosts ?? {};
  if (typeof hostsIn !== "object" || hostsIn === null || Array.isArray(hostsIn)) {
    bad("network.dns.hosts", "must be an object of name → IP address");
  }
  const entries = Object.entries(hostsIn);
  if (entries.length > DEFAULTS.netMaxDnsHosts) {
    bad("network.dns.hosts", `has ${entries.length} names (at most ${DEFAULTS.netMaxDnsHosts})`);
  }
  const hosts: Record<string, string> = {};
  for (const [name, ip] of entries) {
    const n = domainProblem(name);
    if (typeof n === "string") bad("network.dns.hosts", `name ${JSON.stringify(name)} ${n}`);
    if (n.name === HOST_NAME) bad("network.dns.hosts", `${HOST_NAME} is the host's name and cannot be redefined`);
    if (n.name in hosts) bad("network.dns.hosts", `names ${n.name} twice`);
    const a = typeof ip === "string" ? canonicalIp(ip) : undefined;
    if (!a) bad("network.dns.hosts", `${JSON.stringify(name)} → ${JSON.stringify(ip)} is not an IP address`);
    hosts[n.name] = a;
  }
  const upstream = list("network.dns.upstream", d.upstream ?? [], DEFAULTS.netMaxUpstreams).map(parseUpstream);
  return { hosts, upstream: [...new Set(upstream)] };
}

const PEM_RE = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*?)-----END CERTIFICATE-----/g;

/** The length a DER SEQUENCE header announces (header + body), or -1. */
function derLength(der: Uint8Array): number {
  if (der.length < 2 || der[0] !== 0x30) return -1;
  const first = der[1];
  if (first < 0x80) return 2 + first;
  const n = first & 0x7f;
  if (n === 0 || n > 3 || der.length < 2 + n) return -1;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + der[2 + i];
  return 2 + n + len;
}

/**
 * Splits and checks PEM text: one or more `CERTIFICATE` blocks whose base64
 * is one DER SEQUENCE each, nothing else but whitespace around them.
 * Returns each certificate as normalised PEM (64-column base64, `\n` line ends).
 *
 * @example
 * ```ts
 * import { parsePemCertificates } from "./policy.ts";
 * // "MAA=" is the smallest DER SEQUENCE (30 00); a real CA file parses the same way.
 * const certs = parsePemCertificates("-----BEGIN CERTIFICATE-----\r\nMAA=\r\n-----END CERTIFICATE-----");
 * console.log(certs.length, certs[0].endsWith("-----END CERTIFICATE-----\n")); // 1 true
 * if (certs.length !== 1) throw new Error("one certificate expected");
 * ```
 */
export function parsePemCertificates(pem: unknown): string[] {
  const field = "network.trustCa";
  if (typeof pem !== "string") bad(field, "must be PEM text (-----BEGIN CERTIFICATE----- …)");
  const out: string[] = [];
  let rest = pem;
  for (const m of pem.matchAll(PEM_RE)) {
    rest = rest.replace(m[0], "");
    const b64 = m[1].replace(/\s+/g, "");
    let der: Uint8Array;
    try {
      der = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    } catch {
      bad(field, `certificate ${out.length + 1} has bad base64`);
    }
    if (der.length > DEFAULTS.trustCaMaxBytes) {
      bad(field, `certificate ${out.length + 1} is ${der.length} bytes (at most ${DEFAULTS.trustCaMaxBytes})`);
    }
    if (derLength(der) !== der.length) bad(field, `certificate ${out.length + 1} is not one DER certificate`);
    const canonical = btoa(String.fromCharCode(...der)).replace(/.{64}/g, "$&\n").replace(/\n$/, "");
    out.push(`-----BEGIN CERTIFICATE-----\n${canonical}\n-----END CERTIFICATE-----\n`);
  }
  if (out.length === 0) bad(field, "has no -----BEGIN CERTIFICATE----- block");
  if (rest.trim() !== "") {
    bad(field, "has text outside its CERTIFICATE blocks (a private key or another PEM type?); pass certificates only");
  }
  return out;
}

function tlsOf(v: unknown): TlsConfig {
  if (typeof v !== "object" || v === null || Array.isArray(v)) bad("network.tls", "must be an object");
  const t = v as { ports?: unknown; bypass?: unknown };
  const ports = list("network.tls.ports", t.ports ?? DEFAULTS.netTlsPorts, 64).map((p) => {
    if (typeof p !== "number" || !Number.isInteger(p) || p < 1 || p > 65535) {
      bad("network.tls.ports", `${JSON.stringify(p)} is not a port (1-65535)`);
    }
    return p;
  });
  if (ports.length === 0) bad("network.tls.ports", "needs at least one port (secrets are substituted only there)");
  const bypass = list("network.tls.bypass", t.bypass ?? [], DEFAULTS.netMaxRules).map((h) => {
    const n = typeof h === "string" ? domainProblem(h) : "is not a string";
    if (typeof n === "string") bad("network.tls.bypass", `${JSON.stringify(h)} ${n} (exact host names only)`);
    return n.name;
  });
  return { ports: [...new Set(ports)].sort((a, b) => a - b), bypass: [...new Set(bypass)] };
}

/**
 * Validates a network section (from the builder or the store) and fills its
 * defaults. A stored config from before policies (`{ mode: "user" }`) is
 * the default `public` policy. Throws {@link InvalidConfigError} naming the field.
 *
 * @example
 * ```ts
 * import { parseNetwork } from "./policy.ts";
 * console.log(parseNetwork({ mode: "user" }).profiles); // ["public"]
 * ```
 */
export function parseNetwork(raw: unknown): NetworkConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) bad("network", "must be an object");
  const r = { ...NETWORK_DEFAULTS, ...(raw as Partial<NetworkConfig>) };
  if (r.mode !== "none" && r.mode !== "user") bad("network.mode", "must be none or user");
  const maxConnections = r.maxConnections;
  if (typeof maxConnections !== "number" || !Number.isInteger(maxConnections) || maxConnections < 1) {
    bad("network.maxConnections", `must be an integer from 1 to 65535, got ${JSON.stringify(maxConnections)}`);
  }
  if (maxConnections > 65535) {
    bad("network.maxConnections", `must be an integer from 1 to 65535, got ${maxConnections}`);
  }
  return {
    mode: r.mode,
    profiles: profilesOf(r.profiles),
    rules: list("network.rules", r.rules, DEFAULTS.netMaxRules).map((x) => parseRule(x as RuleSpec)),
    dns: dnsOf(r.dns),
    maxConnections,
    trustCa: list("network.trustCa", r.trustCa, DEFAULTS.trustCaMaxCount).flatMap(parsePemCertificates),
    tls: tlsOf(r.tls),
  };
}

/**
 * Every rule of a network in the order the engine tries them: the
 * sandbox's rules, then its profiles' (each with its canonical string).
 *
 * @example
 * ```ts
 * import { expandRules, parseNetwork } from "./policy.ts";
 * const net = parseNetwork({ mode: "user", profiles: ["public", "host"], rules: ["deny@.ads.example"] });
 * console.log(expandRules(net).map((r) => r.id)); // ["deny@.ads.example", "allow@public", "allow@host"]
 * ```
 */
export function expandRules(net: NetworkConfig): { rule: Rule; id: string }[] {
  const all = [...net.rules, ...net.profiles.flatMap((p) => PROFILE_RULES[p].map((s) => parseRule(s)))];
  return all.map((rule) => ({ rule, id: formatRule(rule) }));
}

/** A rule for `allow`/`deny`: a compact string (with or without its `allow@`/`deny@`) or an object without `action`. */
export type RuleArg = string | Omit<RuleInit, "action">;

function ruleWith(action: "allow" | "deny", r: RuleArg): Rule {
  if (typeof r === "string") {
    const m = /^(allow|deny)@/i.exec(r);
    if (m && m[1].toLowerCase() !== action) {
      bad("network.rules", `${r}: passed to ${action}() but says ${m[1].toLowerCase()}`);
    }
    return parseRule(m ? r : `${action}@${r}`);
  }
  if (typeof r !== "object" || r === null) {
    bad("network.rules", `${JSON.stringify(r)}: a rule is a string or an object`);
  }
  if ("action" in r && (r as RuleInit).action !== action) {
    bad("network.rules", `${JSON.stringify(r)}: passed to ${action}() but says ${(r as RuleInit).action}`);
  }
  return parseRule({ ...r, action });
}

/**
 * Builds a sandbox's network (`SandboxBuilder.network(fn)`). Immutable:
 * every call returns a new builder. Every argument is checked at the call
 * and a mistake is an {@link InvalidConfigError} naming it.
 *
 * @example
 * ```ts
 * import { Sandbox } from "@krunbox/krunbox";
 * const b = Sandbox.builder("job").image("python:3.12-slim").network((n) =>
 *   n.policy("none")
 *     .allow("allow@.pypi.org:tcp:443")
 *     .allow({ destination: "files.pythonhosted.org", protocols: ["tcp"], ports: [443] })
 *     .dns({ hosts: { "db.internal": "203.0.113.7" } })
 *     .maxConnections(64)
 * );
 * ```
 */
export class NetworkBuilder {
  readonly #net: NetworkConfig;

  /** A builder starting from `net` (default: the `public` profile). */
  constructor(net: NetworkConfig = NETWORK_DEFAULTS) {
    this.#net = parseNetwork({ ...net, mode: "user" });
  }

  #with(patch: Partial<NetworkConfig>): NetworkBuilder {
    return new NetworkBuilder({ ...this.#net, ...patch });
  }

  /** The profiles (replacing the current ones): `none`, `public` (default), `host`, `all`; combinable. */
  policy(...profiles: Profile[]): NetworkBuilder {
    return this.#with({ profiles: profilesOf(profiles) });
  }

  /** Adds a rule that allows (after the rules added before it). */
  allow(rule: RuleArg): NetworkBuilder {
    return this.#with({ rules: [...this.#net.rules, ruleWith("allow", rule)] });
  }

  /** Adds a rule that denies (after the rules added before it). */
  deny(rule: RuleArg): NetworkBuilder {
    return this.#with({ rules: [...this.#net.rules, ruleWith("deny", rule)] });
  }

  /**
   * Names the engine answers itself (added to the ones before) and the
   * resolvers it asks (replacing them; `ip[:port]`, IPv6 in brackets).
   */
  dns(options: { hosts?: Readonly<Record<string, string>>; upstream?: readonly string[] }): NetworkBuilder {
    const d = dnsOf({
      hosts: { ...this.#net.dns.hosts, ...options.hosts },
      upstream: options.upstream ?? this.#net.dns.upstream,
    });
    return this.#with({ dns: d });
  }

  /** Concurrent guest flows (default 256); over it a new flow is refused, existing ones go on. */
  maxConnections(n: number): NetworkBuilder {
    return this.#with({ maxConnections: n });
  }

  /** Adds root certificates (PEM text, one or more) for checking upstream TLS. */
  trustCa(pem: string): NetworkBuilder {
    return this.#with({ trustCa: [...this.#net.trustCa, ...parsePemCertificates(pem)] });
  }

  /** TLS interception of a sandbox with secrets: the ports (default 443), and exact names never intercepted. */
  tls(options: { bypass?: readonly string[]; ports?: readonly number[] }): NetworkBuilder {
    return this.#with({
      tls: { ports: options.ports ?? this.#net.tls.ports, bypass: options.bypass ?? this.#net.tls.bypass },
    });
  }

  /** The validated network section. */
  build(): NetworkConfig {
    return this.#net;
  }
}
