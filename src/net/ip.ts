/**
 * IP addresses and CIDR blocks as the policy writes them: strict parsing
 * (no leading zeros, no zone ids, no shorthand IPv4 forms such as `10.1`)
 * and one canonical text for each (IPv6 as RFC 5952: lower case, the longest
 * run of zero groups as `::`, IPv4-mapped addresses as `::ffff:a.b.c.d`).
 *
 * @module
 */

/** A parsed address: 4 bytes (IPv4) or 16 (IPv6). */
export interface IpAddress {
  /** 4 or 6. */
  readonly version: 4 | 6;
  /** The address in network byte order. */
  readonly bytes: Uint8Array;
}

const V4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

function v4Bytes(s: string): Uint8Array | undefined {
  const m = V4_RE.exec(s);
  if (!m) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const part = m[i + 1];
    // "010" is octal to some parsers and decimal to others: refuse it.
    if (part.length > 1 && part.startsWith("0")) return undefined;
    const n = Number(part);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

function v6Bytes(s: string): Uint8Array | undefined {
  if (s.length === 0 || s.length > 45 || !/^[0-9a-fA-F:.]+$/.test(s)) return undefined;
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const groups = (h: string): number[] | undefined => {
    if (h === "") return [];
    const out: number[] = [];
    const parts = h.split(":");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (i === parts.length - 1 && p.includes(".")) {
        const v4 = v4Bytes(p);
        if (!v4) return undefined;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return undefined;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (!head || !tail) return undefined;
  // An embedded IPv4 address may only end the address.
  if (halves.length === 2 && halves[0].includes(".")) return undefined;
  const total = head.length + tail.length;
  if (halves.length === 1 ? total !== 8 : total > 7) return undefined;
  const all = [...head, ...new Array(8 - total).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

/**
 * Parses an IPv4 or IPv6 address (no brackets, no zone), or undefined.
 *
 * @example
 * ```ts
 * import { parseIp } from "./ip.ts";
 * console.log(parseIp("2001:db8::1")?.version); // 6
 * console.log(parseIp("010.0.0.1")); // undefined
 * ```
 */
export function parseIp(s: string): IpAddress | undefined {
  const v4 = v4Bytes(s);
  if (v4) return { version: 4, bytes: v4 };
  const v6 = s.includes(":") ? v6Bytes(s) : undefined;
  return v6 ? { version: 6, bytes: v6 } : undefined;
}

/**
 * The canonical text of an address.
 *
 * @example
 * ```ts
 * import { formatIp, parseIp } from "./ip.ts";
 * console.log(formatIp(parseIp("2001:DB8:0:0:0:0:0:1")!)); // 2001:db8::1
 * ```
 */
export function formatIp(ip: IpAddress): string {
  const b = ip.bytes;
  if (ip.version === 4) return Array.from(b).join(".");
  const g = Array.from({ length: 8 }, (_, i) => (b[2 * i] << 8) | b[2 * i + 1]);
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) return `::ffff:${Array.from(b.slice(12)).join(".")}`;
  // The longest run of two or more zero groups (the first on a tie) becomes "::".
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(":");
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/**
 * The canonical text of an address given as text, or undefined when it is not one.
 *
 * @example
 * ```ts
 * import { canonicalIp } from "./ip.ts";
 * console.log(canonicalIp("::FFFF:10.0.0.1")); // ::ffff:10.0.0.1
 * ```
 */
export function canonicalIp(s: string): string | undefined {
  const ip = parseIp(s);
  return ip ? formatIp(ip) : undefined;
}

/** A parsed CIDR block. */
export interface Cidr {
  /** The network address (host bits zero). */
  readonly ip: IpAddress;
  /** The prefix length: 0–32 (IPv4) or 0–128 (IPv6). */
  readonly prefix: number;
}

/**
 * Parses `addr/prefix`: the result, or a sentence saying what is wrong
 * (not an address, prefix out of range, host bits set).
 *
 * @example
 * ```ts
 * import { parseCidr } from "./ip.ts";
 * console.log(parseCidr("10.0.0.1/8")); // "has host bits set (the network is 10.0.0.0/8)"
 * ```
 */
export function parseCidr(s: string): Cidr | string {
  const slash = s.indexOf("/");
  if (slash < 0) return "has no /prefix";
  const addr = s.slice(0, slash), pre = s.slice(slash + 1);
  const ip = parseIp(addr);
  if (!ip) return `${JSON.stringify(addr)} is not an IPv4 or IPv6 address`;
  const max = ip.version === 4 ? 32 : 128;
  if (!/^(0|[1-9]\d{0,2})$/.test(pre) || Number(pre) > max) {
    return `prefix ${JSON.stringify(pre)} is out of range (0-${max} for IPv${ip.version})`;
  }
  const prefix = Number(pre);
  const net = masked(ip.bytes, prefix);
  if (net.some((x, i) => x !== ip.bytes[i])) {
    return `has host bits set (the network is ${formatCidr({ ip: { version: ip.version, bytes: net }, prefix })})`;
  }
  return { ip, prefix };
}

function masked(bytes: Uint8Array, prefix: number): Uint8Array {
  return bytes.map((x, i) => {
    const bits = Math.max(0, Math.min(8, prefix - 8 * i));
    return x & ((0xff << (8 - bits)) & 0xff);
  });
}

/**
 * The canonical text of a CIDR block.
 *
 * @example
 * ```ts
 * import { formatCidr, parseIp } from "./ip.ts";
 * console.log(formatCidr({ ip: parseIp("fc00::")!, prefix: 7 })); // fc00::/7
 * ```
 */
export function formatCidr(c: Cidr): string {
  return `${formatIp(c.ip)}/${c.prefix}`;
}

/**
 * Whether `ip` lies in `cidr` (an address of the other family never does).
 *
 * @example
 * ```ts
 * import { cidrContains, parseCidr, parseIp, type Cidr } from "./ip.ts";
 * console.log(cidrContains(parseCidr("10.0.0.0/8") as Cidr, parseIp("10.1.2.3")!)); // true
 * ```
 */
export function cidrContains(cidr: Cidr, ip: IpAddress): boolean {
  if (cidr.ip.version !== ip.version) return false;
  const m = masked(ip.bytes, cidr.prefix);
  return m.every((x, i) => x === cidr.ip.bytes[i]);
}
