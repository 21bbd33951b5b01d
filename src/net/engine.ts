/**
 * The runner's side of netd/PROTOCOL.md: {@link compileNetd} turns a
 * sandbox's validated network section (and its secrets' in-memory values)
 * into netd's configuration line, and {@link parseNetdLine} /
 * {@link NetdLineStream} turn netd's stdout into typed messages. A
 * malformed or oversized line is a {@link ProtocolError}, never a crash.
 *
 * (Starting netd is the runner's job, in `src/vmm`; this module does no I/O.)
 *
 * @module
 */

import { InvalidConfigError, ProtocolError } from "../errors.ts";
import { DEFAULTS } from "../settings.ts";
import { canonicalIp } from "./ip.ts";
import { expandRules, type NetworkConfig, parsePemCertificates } from "./policy.ts";
import type { PortMapping } from "./ports.ts";
import type { Destination, Direction, Protocol } from "./rules.ts";
import { type SecretConfig, secretValues } from "./secrets.ts";

/** The version of the configuration line this module writes. */
export const NETD_CONFIG_VERSION = 1;

/**
 * The guest's address plan (the same on both backends; slirp's, so guests
 * need no new habits). `mtu` is the link's default (libkrun's: its
 * virtio-net has no VIRTIO_NET_F_MTU, so the guest's receive buffers hold
 * 1500-byte frames); qemu's link uses {@link QEMU_LINK_MTU}.
 */
export const NET_PLAN = Object.freeze({
  mtu: 1500,
  guestIp: "10.0.2.15",
  prefix: 24,
  gateway: "10.0.2.2",
  dnsAddress: "10.0.2.3",
  hostAddress: "10.0.2.254",
  mac: "5a:94:ef:e4:0c:ee",
});

/**
 * The MTU of a qemu guest's link to netd: its virtio-net device advertises
 * it (`host_mtu`, VIRTIO_NET_F_MTU), so the guest's eth0 comes up with it
 * and sizes its receive buffers for it; netd's NIC uses the same. One
 * 64 KiB frame instead of 45 of 1500 bytes: the per-frame cost (qemu's
 * device, the stream socket, both stacks) dominates the link's throughput
 * (issue 15). 65520 keeps a frame (MTU + 14) under the stream framing's
 * 65550 and the IP datagram under 65535.
 */
export const QEMU_LINK_MTU = 65520;

/** A rule as netd receives it. */
export interface NetdRule {
  readonly action: "allow" | "deny";
  readonly direction: Direction;
  readonly dest:
    | { readonly kind: "any" }
    | { readonly kind: "cidr"; readonly cidr: string }
    | { readonly kind: "domain"; readonly name: string }
    | { readonly kind: "suffix"; readonly suffix: string }
    | { readonly kind: "group"; readonly group: string };
  readonly protocols: readonly Protocol[];
  readonly ports: readonly { readonly from: number; readonly to: number }[];
  /** The rule's canonical string, echoed in events. */
  readonly id: string;
}

/** netd's configuration (PROTOCOL.md "Configuration"). */
export interface NetdConfig {
  readonly version: number;
  readonly socket: string;
  readonly mtu: number;
  readonly guest: { readonly mac: string; readonly ip: string; readonly prefix: number };
  readonly gateway: string;
  readonly dnsAddress: string;
  readonly hostAddress: string;
  readonly hostname: string;
  readonly policy: { readonly rules: readonly NetdRule[]; readonly default: "deny" };
  readonly dns: { readonly hosts: Readonly<Record<string, string>>; readonly upstream: readonly string[] };
  readonly ports: readonly { protocol: "tcp" | "udp"; bind: string; host: number; guest: number }[];
  readonly maxConnections: number;
  readonly trustCa: readonly string[];
  readonly tls: { readonly ports: readonly number[]; readonly bypass: readonly string[] };
  readonly secrets: readonly {
    env: string;
    placeholder: string;
    value: string;
    hosts: readonly string[];
    patterns: readonly string[];
    inBody: boolean;
    inQuery: boolean;
  }[];
}

/** What {@link compileNetd} needs of a sandbox config (a `SandboxConfig` fits). */
export interface NetworkedSandbox {
  readonly name: string;
  readonly network: NetworkConfig;
  readonly ports: readonly PortMapping[];
  readonly secrets: readonly SecretConfig[];
}

/** Where this sandbox's netd listens and what the guest is called. */
export interface NetdPlace {
  /** The frame socket path (in a 0700 directory). */
  readonly socket: string;
  /** The guest's hostname (as the VM spec has it). */
  readonly hostname: string;
  /** The guest's MAC address (default {@link NET_PLAN}.mac). */
  readonly mac?: string;
  /** The link's MTU, the guest's device's (default {@link NET_PLAN}.mtu; 576..65535). */
  readonly mtu?: number;
}

function dest(d: Destination): NetdRule["dest"] {
  switch (d.kind) {
    case "ip":
      return { kind: "cidr", cidr: `${d.ip}/${d.ip.includes(":") ? 128 : 32}` };
    case "any":
      return { kind: "any" };
    case "cidr":
      return { kind: "cidr", cidr: d.cidr };
    case "domain":
      return { kind: "domain", name: d.name };
    case "suffix":
      return { kind: "suffix", suffix: d.suffix };
    case "group":
      return { kind: "group", group: d.group };
  }
}

/**
 * netd's configuration for a sandbox: profiles expanded into ordered rules
 * after the sandbox's own, published ports, and each secret with its value
 * from `values` (env name → value, memory only; a missing one is a
 * `SecretUnavailableError`).
 *
 * @example
 * ```ts
 * import { compileNetd } from "./engine.ts";
 * import { parseNetwork } from "./policy.ts";
 * const cfg = compileNetd(
 *   { name: "job", network: parseNetwork({ mode: "user" }), ports: [], secrets: [] },
 *   new Map(),
 *   { socket: "/run/job/net.sock", hostname: "job" },
 * );
 * console.log(cfg.policy.rules.map((r) => r.id)); // ["allow@public"]
 * ```
 */
export function compileNetd(
  sandbox: NetworkedSandbox,
  values: ReadonlyMap<string, string> | undefined,
  place: NetdPlace,
): NetdConfig {
  const net = sandbox.network;
  if (net.mode !== "user") throw new InvalidConfigError("network.mode", "a sandbox without a network has no engine");
  const mac = place.mac ?? NET_PLAN.mac;
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac) || (parseInt(mac.slice(0, 2), 16) & 1) === 1) {
    throw new InvalidConfigError(
      "network.mac",
      `${JSON.stringify(mac)} is not a unicast MAC address (aa:bb:cc:dd:ee:ff)`,
    );
  }
  if (!place.socket.startsWith("/")) throw new InvalidConfigError("network.socket", "must be an absolute path");
  const mtu = place.mtu ?? NET_PLAN.mtu;
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > 65535) {
    throw new InvalidConfigError("network.mtu", `must be an integer 576..65535 (got ${mtu})`);
  }
  return {
    version: NETD_CONFIG_VERSION,
    socket: place.socket,
    mtu,
    guest: { mac, ip: NET_PLAN.guestIp, prefix: NET_PLAN.prefix },
    gateway: NET_PLAN.gateway,
    dnsAddress: NET_PLAN.dnsAddress,
    hostAddress: NET_PLAN.hostAddress,
    hostname: place.hostname,
    policy: {
      rules: expandRules(net).map(({ rule, id }) => ({
        action: rule.action,
        direction: rule.direction,
        dest: dest(rule.destination),
        protocols: rule.protocols,
        ports: rule.ports.map((p) => ({ from: p.from, to: p.to })),
        id,
      })),
      default: "deny",
    },
    dns: { hosts: net.dns.hosts, upstream: net.dns.upstream },
    ports: sandbox.ports.map((p) => ({ protocol: p.protocol, bind: p.bind, host: p.host, guest: p.guest })),
    maxConnections: net.maxConnections,
    trustCa: net.trustCa,
    tls: { ports: net.tls.ports, bypass: net.tls.bypass },
    secrets: netdSecrets(sandbox.name, sandbox.secrets, values),
  };
}

/**
 * The `secrets` member of netd's configuration: each stored secret with its
 * value from `values` (env name → value, memory only; a missing one is a
 * `SecretUnavailableError`). What it returns goes to netd's stdin only.
 *
 * @example
 * ```ts
 * import { netdSecrets } from "./engine.ts";
 * console.log(netdSecrets("job", [], undefined)); // []
 * ```
 */
export function netdSecrets(
  sandbox: string,
  secrets: readonly SecretConfig[],
  values: ReadonlyMap<string, string> | undefined,
): NetdConfig["secrets"] {
  return secretValues(sandbox, secrets, values).map(({ secret, value }) => ({
    env: secret.env,
    placeholder: secret.placeholder,
    value,
    hosts: secret.hosts,
    patterns: secret.patterns,
    inBody: secret.inBody,
    inQuery: secret.inQuery,
  }));
}

/**
 * The first line to write to netd's stdin (JSON and `\n`). It carries secret
 * values: write it to the pipe and nowhere else.
 *
 * @example
 * ```ts
 * import { compileNetd, netdConfigLine } from "./engine.ts";
 * import { parseNetwork } from "./policy.ts";
 * const line = netdConfigLine(compileNetd(
 *   { name: "job", network: parseNetwork({ mode: "user" }), ports: [], secrets: [] },
 *   undefined,
 *   { socket: "/run/job/net.sock", hostname: "job" },
 * ));
 * ```
 */
export function netdConfigLine(config: NetdConfig): string {
  return `${JSON.stringify(config)}\n`;
}

/**
 * A control command line for netd's stdin.
 *
 * @example
 * ```ts
 * import { netdCommand } from "./engine.ts";
 * console.log(netdCommand("stats")); // {"cmd":"stats"}\n
 * ```
 */
export function netdCommand(cmd: "stats" | "shutdown"): string {
  return `${JSON.stringify({ cmd })}\n`;
}

/** What netd decided about a flow. */
export type NetworkAction = "allowed" | "denied" | "secret-substituted" | "secret-blocked";
/** Why: a rule matched, nothing matched (the default), DNS refused the name, a rebinding answer, a limit, a secret. */
export type NetworkReason = "rule" | "default" | "dns" | "rebinding" | "limit" | "secret";

/** One decision of the engine. */
export interface NetworkEvent {
  /** When netd decided. */
  readonly timestamp: Date;
  /** `egress` (the guest opened it) or `ingress` (a client of a published port). */
  readonly direction: Direction;
  /** `tcp`, `udp` or `icmp`. */
  readonly protocol: Protocol;
  /** The remote address (the destination for egress, the client for ingress), canonical text. */
  readonly address: string;
  /** The remote port (0 for icmp). */
  readonly port: number;
  /** The DNS name the guest resolved for that address, when there is one (control characters escaped). */
  readonly name?: string;
  /** What was decided. */
  readonly action: NetworkAction;
  /** The canonical string of the rule that decided, when one did. */
  readonly rule?: string;
  /** Why. */
  readonly reason: NetworkReason;
  /** How many identical events were suppressed before this one (rate limit), when any. */
  readonly repeated?: number;
}

/** netd's counters. */
export interface NetStats {
  /** Ethernet bytes to the guest. */
  readonly rxBytes: number;
  /** Ethernet bytes from the guest. */
  readonly txBytes: number;
  /** Flows open now. */
  readonly connections: number;
  /** Flows since start. */
  readonly flows: number;
  /** Events netd never wrote (its rate-limit table full, or the runner too slow to read); absent from older netd. */
  readonly eventsDropped?: number;
}

/** One line of netd's stdout, parsed. */
export type NetdMessage =
  | { readonly type: "ready"; readonly version: string; readonly caPem?: string }
  | { readonly type: "event"; readonly event: NetworkEvent }
  | { readonly type: "stats"; readonly stats: NetStats }
  | { readonly type: "error"; readonly message: string };

/** A line {@link NetdLineStream} could not use (it goes on with the next one). */
export interface NetdInvalidLine {
  readonly type: "invalid";
  readonly error: ProtocolError;
}

const DIRECTIONS = ["egress", "ingress"];
const PROTOS = ["tcp", "udp", "icmp"];
const ACTIONS = ["allowed", "denied", "secret-substituted", "secret-blocked"];
const REASONS = ["rule", "default", "dns", "rebinding", "limit", "secret"];

function reject(detail: string, cause?: unknown): never {
  throw new ProtocolError(`netd sent a bad line: ${detail}`, cause === undefined ? undefined : { cause });
}

/** Printable ASCII as is; anything else as `\xNN` / `\u{…}` (names come from the guest's queries). */
function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]|\\/gu, (c) => {
    if (c === "\\") return "\\\\";
    const cp = c.codePointAt(0)!;
    return cp < 0x100 ? `\\x${cp.toString(16).padStart(2, "0")}` : `\\u{${cp.toString(16)}}`;
  });
}

function str(o: Record<string, unknown>, key: string, max: number): string {
  const v = o[key];
  if (typeof v !== "string") reject(`"${key}" must be a string`);
  if (v.length > max) reject(`"${key}" is ${v.length} characters long (at most ${max})`);
  return v;
}

function oneOf<T extends string>(o: Record<string, unknown>, key: string, allowed: readonly string[]): T {
  const v = o[key];
  if (typeof v !== "string" || !allowed.includes(v)) {
    reject(`"${key}" must be one of ${allowed.join(", ")}, got ${JSON.stringify(v)?.slice(0, 64)}`);
  }
  return v as T;
}

function count(o: Record<string, unknown>, key: string, max = Number.MAX_SAFE_INTEGER): number {
  const v = o[key];
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > max) {
    reject(`"${key}" must be an integer from 0 to ${max}, got ${JSON.stringify(v)?.slice(0, 64)}`);
  }
  return v;
}

function event(o: Record<string, unknown>): NetworkEvent {
  const ts = str(o, "timestamp", 64);
  const timestamp = new Date(ts);
  if (!/^\d{4}-\d\d-\d\dT/.test(ts) || Number.isNaN(timestamp.getTime())) {
    reject(`"timestamp" ${JSON.stringify(ts)} is not ISO 8601`);
  }
  const rawAddress = str(o, "address", 64);
  const address = canonicalIp(rawAddress);
  if (!address) reject(`"address" ${JSON.stringify(rawAddress)} is not an IP address`);
  const e: { -readonly [K in keyof NetworkEvent]: NetworkEvent[K] } = {
    timestamp,
    direction: oneOf<Direction>(o, "direction", DIRECTIONS),
    protocol: oneOf<Protocol>(o, "protocol", PROTOS),
    address,
    port: count(o, "port", 65535),
    action: oneOf<NetworkAction>(o, "action", ACTIONS),
    reason: oneOf<NetworkReason>(o, "reason", REASONS),
  };
  if (o.name !== undefined && o.name !== null) e.name = printable(str(o, "name", 1024));
  if (o.rule !== undefined && o.rule !== null) e.rule = printable(str(o, "rule", 4096));
  if (o.repeated !== undefined && o.repeated !== null) e.repeated = count(o, "repeated");
  return e;
}

/**
 * Parses one line of netd's stdout (without its `\n`). Unknown members are
 * ignored; a line that is not JSON, too long, of an unknown type or with a
 * bad member is a {@link ProtocolError}.
 *
 * @example
 * ```ts
 * import { parseNetdLine } from "./engine.ts";
 * const m = parseNetdLine('{"type":"stats","rxBytes":1,"txBytes":2,"connections":0,"flows":3}');
 * if (m.type === "stats") console.log(m.stats.flows); // 3
 * ```
 */
export function parseNetdLine(line: string | Uint8Array): NetdMessage {
  const bytes = typeof line === "string" ? new TextEncoder().encode(line).length : line.length;
  if (bytes > DEFAULTS.netdLineMaxBytes) reject(`a line of ${bytes} bytes (at most ${DEFAULTS.netdLineMaxBytes})`);
  let text: string;
  try {
    text = typeof line === "string" ? line : new TextDecoder("utf-8", { fatal: true }).decode(line);
  } catch (cause) {
    reject("a line that is not UTF-8", cause);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (cause) {
    reject(`not JSON: ${JSON.stringify(text.slice(0, 80))}`, cause);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) reject("a line that is not a JSON object");
  const o = v as Record<string, unknown>;
  switch (o.type) {
    case "ready": {
      const version = str(o, "version", 64);
      if (o.caPem === undefined || o.caPem === null) return { type: "ready", version };
      let caPem: string;
      try {
        [caPem] = parsePemCertificates(str(o, "caPem", DEFAULTS.trustCaMaxBytes * 2));
      } catch (cause) {
        reject(`"caPem" is not one PEM certificate`, cause);
      }
      return { type: "ready", version, caPem };
    }
    case "event":
      return { type: "event", event: event(o) };
    case "stats":
      return {
        type: "stats",
        stats: {
          rxBytes: count(o, "rxBytes"),
          txBytes: count(o, "txBytes"),
          connections: count(o, "connections"),
          flows: count(o, "flows"),
          ...(o.eventsDropped === undefined || o.eventsDropped === null
            ? {}
            : { eventsDropped: count(o, "eventsDropped") }),
        },
      };
    case "error":
      return { type: "error", message: printable(str(o, "message", DEFAULTS.netdLineMaxBytes)) };
    default:
      reject(`unknown type ${JSON.stringify(o.type)?.slice(0, 64)}`);
  }
}

/**
 * Splits netd's stdout into lines and parses each: a message, or an
 * `invalid` entry with the {@link ProtocolError} for a line that could not
 * be used (the stream goes on). A line over the limit is discarded as it
 * arrives, never buffered whole; a last line without `\n` is parsed at the end.
 *
 * @example
 * ```ts
 * import { NetdLineStream } from "./engine.ts";
 * const body = new Response('{"type":"ready","version":"0.1.0"}\n').body!;
 * for await (const m of body.pipeThrough(new NetdLineStream())) console.log(m.type); // ready
 * ```
 */
export class NetdLineStream extends TransformStream<Uint8Array, NetdMessage | NetdInvalidLine> {
  /** A stream with the line limit of `DEFAULTS.netdLineMaxBytes`. */
  constructor(maxLineBytes: number = DEFAULTS.netdLineMaxBytes) {
    let parts: Uint8Array[] = [];
    let size = 0;
    let skipping = false;
    const emit = (c: TransformStreamDefaultController<NetdMessage | NetdInvalidLine>) => {
      const line = new Uint8Array(size);
      let at = 0;
      for (const p of parts) {
        line.set(p, at);
        at += p.length;
      }
      parts = [];
      size = 0;
      const end = line.length > 0 && line[line.length - 1] === 0x0d ? line.length - 1 : line.length;
      if (end === 0) return;
      try {
        c.enqueue(parseNetdLine(line.subarray(0, end)));
      } catch (e) {
        c.enqueue({
          type: "invalid",
          error: e instanceof ProtocolError ? e : new ProtocolError(String(e), { cause: e }),
        });
      }
    };
    super({
      transform(chunk, c) {
        let start = 0;
        while (start < chunk.length) {
          const nl = chunk.indexOf(0x0a, start);
          const stop = nl < 0 ? chunk.length : nl;
          if (!skipping) {
            if (size + stop - start > maxLineBytes) {
              skipping = true;
              parts = [];
              size = 0;
              c.enqueue({
                type: "invalid",
                error: new ProtocolError(`netd sent a bad line: a line over ${maxLineBytes} bytes (discarded)`),
              });
            } else {
              parts.push(chunk.slice(start, stop));
              size += stop - start;
            }
          }
          if (nl < 0) break;
          if (skipping) skipping = false;
          else emit(c);
          start = nl + 1;
        }
      },
      flush(c) {
        if (!skipping && size > 0) emit(c);
      },
    });
  }
}
