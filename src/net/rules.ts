/**
 * Network rules: the model, the compact string grammar and the canonical
 * form. The engine (`netd`) applies them; this module only parses, validates
 * and prints them, so that every mistake is caught when the sandbox is
 * built, with an {@link InvalidConfigError} naming the rule.
 *
 * ## The compact form
 *
 * ```text
 * rule        = action "@" destination [":" protocols] [":" ports] [":" direction]
 * action      = "allow" | "deny"
 * destination = "any"
 *             | group                      public private loopback host link-local metadata multicast
 *             | ipv4 ["/" prefix]          10.0.0.0/8, 203.0.113.7
 *             | "[" ipv6 ["/" prefix] "]"  [::1], [fc00::/7]   (IPv6 always in brackets: it has colons)
 *             | domain                     api.example.com     (exactly that name)
 *             | "." domain                 .example.com        (example.com and every name under it)
 * protocols   = protocol *("," protocol)   tcp udp icmp        (absent: every protocol)
 * ports       = range *("," range)         443  80,443,8000-8999 (absent: every port; needs tcp/udp, not icmp)
 * range       = port ["-" port]            1-65535, from <= to
 * direction   = "egress" | "ingress"       (absent: egress; ingress rules check published ports' clients)
 * ```
 *
 * Examples: `allow@.pypi.org:tcp:443`, `deny@10.0.0.0/8`,
 * `allow@public:tcp:80,443,8000-8999`, `allow@127.0.0.1:tcp:8080:ingress`,
 * `deny@[fd00:ec2::254]`. Keywords and names are case-insensitive and
 * printed in lower case. A one-label domain spelled like a keyword (`host`,
 * `any`, a group) is written with a trailing dot: `allow@host.`.
 *
 * The canonical string of a rule ({@link formatRule}) is what events and
 * `netd` call the rule (its `id`): protocols in the order tcp, udp, icmp,
 * ports sorted, duplicates dropped, `egress` left out, addresses in their
 * canonical text (`10.0.0.1` rather than `10.0.0.1/32`).
 *
 * @module
 */

import { InvalidConfigError } from "../errors.ts";
import { canonicalIp, type Cidr, formatCidr, formatIp, parseCidr, parseIp } from "./ip.ts";

/** What a matching rule does. */
export type Action = "allow" | "deny";
/** `egress`: flows the guest opens; `ingress`: connections to published ports. */
export type Direction = "egress" | "ingress";
/** A transport a rule can name. */
export type Protocol = "tcp" | "udp" | "icmp";
/** A named set of addresses (see netd/PROTOCOL.md "Decisions" for their ranges). */
export type Group = "public" | "private" | "loopback" | "host" | "link-local" | "metadata" | "multicast";

/** Every group, in the order the docs list them. */
export const GROUPS: readonly Group[] = [
  "public",
  "private",
  "loopback",
  "host",
  "link-local",
  "metadata",
  "multicast",
];
/** Every protocol, in canonical order. */
export const PROTOCOLS: readonly Protocol[] = ["tcp", "udp", "icmp"];

/** Where a rule applies. */
export type Destination =
  | { readonly kind: "any" }
  | { readonly kind: "ip"; readonly ip: string }
  | { readonly kind: "cidr"; readonly cidr: string }
  | { readonly kind: "domain"; readonly name: string }
  | { readonly kind: "suffix"; readonly suffix: string }
  | { readonly kind: "group"; readonly group: Group };

/** An inclusive port range (`from === to` for one port). */
export interface PortRange {
  /** First port, 1–65535. */
  readonly from: number;
  /** Last port, `from`–65535. */
  readonly to: number;
}

/**
 * A validated rule in canonical form: what the config stores and the
 * engine receives.
 */
export interface Rule {
  /** `allow` or `deny`. */
  readonly action: Action;
  /** `egress` (default) or `ingress`. */
  readonly direction: Direction;
  /** Where it applies. */
  readonly destination: Destination;
  /** The protocols it covers, in canonical order; empty: every protocol. */
  readonly protocols: readonly Protocol[];
  /** The ports it covers, sorted; empty: every port. */
  readonly ports: readonly PortRange[];
}

/**
 * A rule as a caller writes it in object form. `destination` is a
 * {@link Destination} or its text as in the compact form (brackets around an
 * IPv6 address are optional here); ports are numbers, `"8000-8999"` strings
 * or ranges.
 *
 * @example
 * ```ts
 * import { parseRule, type RuleInit } from "./rules.ts";
 * const r: RuleInit = { action: "allow", destination: ".pypi.org", protocols: ["tcp"], ports: [443] };
 * console.log(parseRule(r)); // the same Rule as parseRule("allow@.pypi.org:tcp:443")
 * ```
 */
export interface RuleInit {
  /** `allow` or `deny`. */
  readonly action: Action;
  /** Where it applies. */
  readonly destination: string | Destination;
  /** One protocol or several (default: every protocol). */
  readonly protocols?: Protocol | readonly Protocol[];
  /** Ports and ranges (default: every port). */
  readonly ports?: number | string | readonly (number | string | PortRange)[];
  /** `egress` (default) or `ingress`. */
  readonly direction?: Direction;
}

/** A rule as written, in either form. */
export type RuleSpec = string | RuleInit;

/** The name `netd` answers for the host; reachable only through the `host` group. */
export const HOST_NAME = "host.krunbox.internal";

const KEYWORDS = new Set<string>(["any", ...GROUPS]);

/** Whether a suffix (`.example.com`) matches {@link HOST_NAME}: `.internal`, `.krunbox.internal`, …. */
function coversHostName(suffix: string): boolean {
  return suffix.slice(1) === HOST_NAME || HOST_NAME.endsWith(suffix);
}

function suffixOf(rule: RuleSpec, raw: string): Destination {
  const suffix = `.${domainOf(rule, raw)}`;
  if (coversHostName(suffix)) {
    fail(
      rule,
      `${suffix} covers ${HOST_NAME}, which only the host group reaches: name a narrower suffix (.corp.internal) and write allow@host for the host`,
    );
  }
  return { kind: "suffix", suffix };
}

function fail(rule: RuleSpec, detail: string): never {
  const text = typeof rule === "string" ? rule : safeJson(rule);
  throw new InvalidConfigError("network.rules", `${text}: ${detail}`);
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/**
 * Checks a DNS name and returns it in lower case without a trailing dot, or
 * a sentence saying what is wrong with it.
 *
 * @example
 * ```ts
 * import { domainProblem } from "./rules.ts";
 * console.log(domainProblem("API.Example.com.")); // { name: "api.example.com" }
 * console.log(domainProblem("a..b")); // "has an empty label"
 * ```
 */
export function domainProblem(raw: string): { name: string } | string {
  const name = (raw.endsWith(".") ? raw.slice(0, -1) : raw).toLowerCase();
  if (name.length === 0) return "is an empty domain";
  if (name.length > 253) return `is ${name.length} characters long (a domain has at most 253)`;
  if (/[^\x21-\x7e]/.test(name)) return "has a character that is not printable ASCII (write IDNs in punycode: xn--…)";
  const labels = name.split(".");
  for (const l of labels) {
    if (l.length === 0) return "has an empty label";
    if (l.length > 63) return `has a label of ${l.length} characters (at most 63)`;
    if (!/^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$/.test(l)) {
      return `has a bad label ${JSON.stringify(l)} (letters, digits, "-" and "_", not starting or ending with "-")`;
    }
  }
  if (/^\d+$/.test(labels[labels.length - 1])) return "is not a valid IP address, and a domain cannot end in a number";
  return { name };
}

function domainOf(rule: RuleSpec, raw: string): string {
  const d = domainProblem(raw);
  if (typeof d === "string") fail(rule, `${JSON.stringify(raw)} ${d}`);
  return d.name;
}

/**
 * netd compares IPv4 flows as IPv4: a rule for an IPv4-mapped IPv6 block
 * (`::ffff:0:0/96` and inside it) would never match, and netd refuses it.
 */
function refuseMapped(rule: RuleSpec, c: Cidr): void {
  const b = c.ip.bytes;
  if (c.ip.version !== 6 || c.prefix < 96 || b.slice(0, 10).some((x) => x !== 0) || b[10] !== 0xff || b[11] !== 0xff) {
    return;
  }
  const v4 = `${Array.from(b.slice(12)).join(".")}${c.prefix === 128 ? "" : `/${c.prefix - 96}`}`;
  fail(
    rule,
    `${formatCidr(c)} is an IPv4-mapped IPv6 ${c.prefix === 128 ? "address" : "block"}: write the IPv4 form ${v4}`,
  );
}

/** A block of one address is that address (so that each destination has one canonical form). */
function cidrDestination(rule: RuleSpec, c: Cidr): Destination {
  refuseMapped(rule, c);
  const full = c.prefix === (c.ip.version === 4 ? 32 : 128);
  return full ? { kind: "ip", ip: formatIp(c.ip) } : { kind: "cidr", cidr: formatCidr(c) };
}

/** Parses a destination's text (as in the compact form; `bracketed` when it came in `[...]`). */
function destinationOf(rule: RuleSpec, raw: string, bracketed: boolean): Destination {
  const text = raw.toLowerCase();
  if (bracketed) {
    if (!text.includes(":")) fail(rule, `brackets are for IPv6 addresses only, got [${raw}]`);
  } else {
    if (text === "") fail(rule, "has an empty destination");
    if (text === "any") return { kind: "any" };
    if ((GROUPS as readonly string[]).includes(text)) return { kind: "group", group: text as Group };
  }
  if (text.includes("/")) {
    const c = parseCidr(text);
    if (typeof c === "string") fail(rule, `CIDR ${JSON.stringify(raw)} ${c}`);
    if (c.ip.version === 6 && !bracketed && typeof rule === "string") {
      fail(rule, `IPv6 blocks go in brackets: [${formatCidr(c)}]`);
    }
    return cidrDestination(rule, c);
  }
  const ip = canonicalIp(text);
  if (ip) {
    const parsed = parseIp(text)!;
    refuseMapped(rule, { ip: parsed, prefix: parsed.version === 4 ? 32 : 128 });
    if (ip.includes(":") && !bracketed && typeof rule === "string") {
      fail(rule, `IPv6 addresses go in brackets: [${ip}]`);
    }
    return { kind: "ip", ip };
  }
  if (text.includes(":")) fail(rule, `${JSON.stringify(raw)} is not an IPv6 address`);
  if (/^\d[\d.]*$/.test(text)) fail(rule, `${JSON.stringify(raw)} is not a valid IPv4 address`);
  if (text.startsWith("*.")) fail(rule, `wildcards are written as a suffix: .${text.slice(2)}`);
  if (text.startsWith(".")) return suffixOf(rule, text.slice(1));
  const name = domainOf(rule, text);
  if (name === HOST_NAME) fail(rule, `${HOST_NAME} is reachable only through the host group: write allow@host`);
  return { kind: "domain", name };
}

function checkDestination(rule: RuleSpec, d: Destination): Destination {
  switch (d?.kind) {
    case "any":
      return { kind: "any" };
    case "group":
      if (!(GROUPS as readonly unknown[]).includes(d.group)) {
        fail(rule, `unknown group ${safeJson(d.group)} (one of ${GROUPS.join(", ")})`);
      }
      return { kind: "group", group: d.group };
    case "ip": {
      const parsed = typeof d.ip === "string" ? parseIp(d.ip) : undefined;
      if (!parsed) fail(rule, `${safeJson(d.ip)} is not an IP address`);
      return cidrDestination(rule, { ip: parsed, prefix: parsed.version === 4 ? 32 : 128 });
    }
    case "cidr": {
      const c = typeof d.cidr === "string" ? parseCidr(d.cidr) : "is not a string";
      if (typeof c === "string") fail(rule, `CIDR ${safeJson(d.cidr)} ${c}`);
      return cidrDestination(rule, c);
    }
    case "domain": {
      if (typeof d.name !== "string") fail(rule, "domain name must be a string");
      const name = domainOf(rule, d.name);
      if (name === HOST_NAME) fail(rule, `${HOST_NAME} is reachable only through the host group: write allow@host`);
      return { kind: "domain", name };
    }
    case "suffix": {
      if (typeof d.suffix !== "string" || !d.suffix.startsWith(".")) {
        fail(rule, 'a suffix must be a string starting with "." (.example.com)');
      }
      return suffixOf(rule, d.suffix.slice(1));
    }
    default:
      fail(rule, `unknown destination kind ${safeJson((d as { kind?: unknown })?.kind)}`);
  }
}

function portOf(rule: RuleSpec, raw: unknown): number {
  if (typeof raw === "string") {
    if (!/^\d+$/.test(raw)) fail(rule, `port ${JSON.stringify(raw)} is not a number`);
    if (raw.length > 1 && raw.startsWith("0")) fail(rule, `port ${JSON.stringify(raw)} has a leading zero`);
    raw = Number(raw);
  }
  if (typeof raw !== "number" || !Number.isInteger(raw)) fail(rule, `port ${safeJson(raw)} is not an integer`);
  if (raw < 1 || raw > 65535) fail(rule, `port ${raw} is out of range (1-65535)`);
  return raw;
}

function rangeOf(rule: RuleSpec, raw: number | string | PortRange): PortRange {
  let from: number, to: number;
  if (typeof raw === "object" && raw !== null) {
    from = portOf(rule, raw.from);
    to = portOf(rule, raw.to);
  } else if (typeof raw === "string" && raw.includes("-")) {
    const [a, b, ...more] = raw.split("-");
    if (more.length > 0 || a === "" || b === "") fail(rule, `port range ${JSON.stringify(raw)} is not from-to`);
    from = portOf(rule, a);
    to = portOf(rule, b);
  } else {
    from = to = portOf(rule, raw);
  }
  if (from > to) fail(rule, `port range ${from}-${to} is reversed (write ${to}-${from})`);
  return { from, to };
}

function normalise(
  rule: RuleSpec,
  action: unknown,
  destination: Destination,
  protocols: readonly unknown[],
  ports: readonly (number | string | PortRange)[],
  direction: unknown,
): Rule {
  if (action !== "allow" && action !== "deny") fail(rule, `action must be allow or deny, got ${safeJson(action)}`);
  if (direction !== "egress" && direction !== "ingress") {
    fail(rule, `direction must be egress or ingress, got ${safeJson(direction)}`);
  }
  for (const p of protocols) {
    if (!(PROTOCOLS as readonly unknown[]).includes(p)) {
      fail(rule, `unknown protocol ${safeJson(p)} (tcp, udp or icmp)`);
    }
  }
  const protos = PROTOCOLS.filter((p) => protocols.includes(p));
  const ranges = ports.map((p) => rangeOf(rule, p));
  if (ranges.length > 0) {
    if (protos.length === 0) fail(rule, "ports need a protocol: write tcp:PORTS or udp:PORTS");
    if (protos.includes("icmp")) fail(rule, "icmp has no ports: give icmp a rule of its own");
  }
  const sorted = ranges.sort((a, b) => a.from - b.from || a.to - b.to)
    .filter((r, i, all) => i === 0 || r.from !== all[i - 1].from || r.to !== all[i - 1].to);
  return { action, direction, destination, protocols: protos, ports: sorted };
}

function parseString(rule: string): Rule {
  if (rule.length > 4096) fail(rule.slice(0, 64) + "…", `is ${rule.length} characters long (at most 4096)`);
  if (/\s/.test(rule)) fail(rule, "contains whitespace");
  const at = rule.indexOf("@");
  if (at < 0) fail(rule, 'has no "@": write ACTION@DESTINATION, e.g. allow@.example.com:tcp:443');
  const action = rule.slice(0, at).toLowerCase();
  if (action !== "allow" && action !== "deny") {
    fail(rule, `action must be allow or deny, got ${JSON.stringify(action)}`);
  }
  let rest = rule.slice(at + 1);
  let destination: Destination;
  if (rest.startsWith("[")) {
    const close = rest.indexOf("]");
    if (close < 0) fail(rule, 'has "[" without "]"');
    if (rest[close + 1] === "/") fail(rule, `the prefix goes inside the brackets: [${rest.slice(1, close)}/…]`);
    destination = destinationOf(rule, rest.slice(1, close), true);
    rest = rest.slice(close + 1);
    if (rest !== "" && !rest.startsWith(":")) fail(rule, `unexpected ${JSON.stringify(rest)} after "]"`);
    rest = rest.slice(1);
  } else {
    if (/^[0-9a-f:.]*::/i.test(rest)) fail(rule, "an IPv6 address goes in brackets: allow@[ADDRESS]:…");
    const parts = rest.split(":");
    for (let k = Math.min(8, parts.length); k >= 3; k--) {
      const six = canonicalIp(parts.slice(0, k).join(":").split("/")[0]);
      if (six?.includes(":")) fail(rule, `an IPv6 address goes in brackets: [${six}]`);
    }
    const colon = rest.indexOf(":");
    destination = destinationOf(rule, colon < 0 ? rest : rest.slice(0, colon), false);
    rest = colon < 0 ? "" : rest.slice(colon + 1);
  }
  if (rest === "" && rule.endsWith(":")) fail(rule, "ends with an empty part");
  const segments = rest === "" ? [] : rest.split(":");
  let protocols: string[] = [], ports: string[] = [], direction = "egress";
  let stage = 0; // 0: protocols next, 1: ports next, 2: direction next, 3: nothing more
  for (const seg of segments) {
    const s = seg.toLowerCase();
    if (s === "") fail(rule, "has an empty part (two colons in a row?)");
    if (stage === 3) fail(rule, `unexpected ${JSON.stringify(seg)} after the direction`);
    if (s === "egress" || s === "ingress") {
      direction = s;
      stage = 3;
    } else if (/^[0-9]/.test(s)) {
      if (stage > 1) fail(rule, `unexpected ports ${JSON.stringify(seg)}: ports come once, after the protocols`);
      ports = s.split(",");
      if (ports.includes("")) fail(rule, `port list ${JSON.stringify(seg)} has an empty entry`);
      stage = 2;
    } else if (/^[a-z]/.test(s)) {
      if (stage > 0) {
        fail(rule, `${JSON.stringify(seg)} is not a direction (egress or ingress)`);
      }
      protocols = s.split(",");
      for (const p of protocols) {
        if (!(PROTOCOLS as readonly string[]).includes(p)) {
          fail(rule, `unknown protocol ${JSON.stringify(p)} (tcp, udp or icmp; a direction is egress or ingress)`);
        }
      }
      stage = 1;
    } else {
      fail(rule, `unexpected ${JSON.stringify(seg)} (expected protocols, ports or a direction)`);
    }
  }
  if (new Set(protocols).size !== protocols.length) fail(rule, "names a protocol twice");
  return normalise(rule, action, destination, protocols, ports, direction);
}

/**
 * Parses and validates a rule in either form into its canonical {@link Rule}.
 * A {@link Rule} is a valid input too (parsing is idempotent). Throws
 * {@link InvalidConfigError} (field `network.rules`) naming the rule and
 * what is wrong with it.
 *
 * @example
 * ```ts
 * import { parseRule } from "./rules.ts";
 * const r = parseRule("allow@public:tcp:80,443,8000-8999");
 * console.log(r.ports); // [{ from: 80, to: 80 }, { from: 443, to: 443 }, { from: 8000, to: 8999 }]
 * ```
 */
export function parseRule(rule: RuleSpec): Rule {
  if (typeof rule === "string") return parseString(rule);
  if (typeof rule !== "object" || rule === null) fail(rule, "a rule is a string or an object");
  const d = rule.destination;
  const destination = typeof d === "string"
    ? (d.startsWith("[") && d.endsWith("]") ? destinationOf(rule, d.slice(1, -1), true) : destinationOf(rule, d, false))
    : checkDestination(rule, d);
  const protocols = rule.protocols === undefined
    ? []
    : Array.isArray(rule.protocols)
    ? rule.protocols
    : [rule.protocols];
  const ports = rule.ports === undefined ? [] : Array.isArray(rule.ports) ? rule.ports : [rule.ports];
  if (new Set(protocols).size !== protocols.length) fail(rule, "names a protocol twice");
  return normalise(rule, rule.action, destination, protocols, ports, rule.direction ?? "egress");
}

function formatDestination(d: Destination): string {
  switch (d.kind) {
    case "any":
      return "any";
    case "group":
      return d.group;
    case "ip":
      return d.ip.includes(":") ? `[${d.ip}]` : d.ip;
    case "cidr":
      return d.cidr.includes(":") ? `[${d.cidr}]` : d.cidr;
    case "domain":
      return KEYWORDS.has(d.name) ? `${d.name}.` : d.name;
    case "suffix":
      return d.suffix;
  }
}

/**
 * The canonical compact string of a rule: `parseRule(formatRule(r))` equals
 * `r` for every rule, and `formatRule(parseRule(s))` is `s` for a canonical `s`.
 *
 * @example
 * ```ts
 * import { formatRule, parseRule } from "./rules.ts";
 * console.log(formatRule(parseRule({ action: "deny", destination: "10.0.0.0/8" }))); // deny@10.0.0.0/8
 * ```
 */
export function formatRule(rule: Rule): string {
  let s = `${rule.action}@${formatDestination(rule.destination)}`;
  if (rule.protocols.length > 0) s += `:${rule.protocols.join(",")}`;
  if (rule.ports.length > 0) {
    s += `:${rule.ports.map((p) => p.from === p.to ? `${p.from}` : `${p.from}-${p.to}`).join(",")}`;
  }
  if (rule.direction === "ingress") s += ":ingress";
  return s;
}
