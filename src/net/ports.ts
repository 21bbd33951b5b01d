/**
 * Published ports: host listeners of the engine that forward to a guest
 * port, subject to the sandbox's ingress rules.
 *
 * @module
 */

import { InvalidConfigError } from "../errors.ts";
import { canonicalIp } from "./ip.ts";

/** A published port. */
export interface PortMapping {
  /** Host port (1–65535). */
  readonly host: number;
  /** Guest port (1–65535) it forwards to. */
  readonly guest: number;
  /** Transport protocol of the port. */
  readonly protocol: "tcp" | "udp";
  /** The host address it listens on (default 127.0.0.1; `0.0.0.0` or `::` exposes it to the network). */
  readonly bind: string;
}

/** The address a published port listens on unless told otherwise. */
export const DEFAULT_BIND = "127.0.0.1";

function port(field: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 65535) {
    throw new InvalidConfigError(field, `must be an integer from 1 to 65535, got ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * Validates published ports (stored ones from before `bind` get 127.0.0.1):
 * ports in range, tcp or udp, `bind` an IP address, no host port published
 * twice on the same address and protocol.
 *
 * @example
 * ```ts
 * import { parsePorts } from "./ports.ts";
 * console.log(parsePorts([{ host: 8080, guest: 80, protocol: "tcp" }])[0].bind); // 127.0.0.1
 * ```
 */
export function parsePorts(raw: unknown): PortMapping[] {
  if (!Array.isArray(raw)) throw new InvalidConfigError("ports", "must be an array");
  const out: PortMapping[] = [];
  for (const p of raw as Partial<PortMapping>[]) {
    if (typeof p !== "object" || p === null) throw new InvalidConfigError("ports", "each port must be an object");
    const host = port("ports.host", p.host), guest = port("ports.guest", p.guest);
    if (p.protocol !== "tcp" && p.protocol !== "udp") {
      throw new InvalidConfigError("ports.protocol", "must be tcp or udp");
    }
    const bind = typeof p.bind === "string" ? canonicalIp(p.bind) : p.bind === undefined ? DEFAULT_BIND : undefined;
    if (!bind) {
      throw new InvalidConfigError(
        "ports.bind",
        `${JSON.stringify(p.bind)} is not an IP address (e.g. 127.0.0.1, ::1)`,
      );
    }
    const clash = out.find((o) => o.host === host && o.protocol === p.protocol && o.bind === bind);
    if (clash) {
      throw new InvalidConfigError("ports.host", `${p.protocol} port ${host} on ${bind} is published twice`);
    }
    out.push({ host, guest, protocol: p.protocol, bind });
  }
  return out;
}
