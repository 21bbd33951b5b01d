/**
 * `guest.configure` (agent/PROTOCOL.md): a booted guest's per-sandbox
 * identity in one request — hostname, the default exec env, the wall clock
 * and a reseed of the kernel's random state. A warm pool's sandbox gets its
 * user's name and env this way when it is handed out; a VM restored from a
 * snapshot gets its clock and fresh randomness.
 *
 * @module
 */

import { AgentError, InvalidConfigError } from "../errors.ts";
import type { AgentClient, RequestOptions } from "./client.ts";
import { type GuestConfigureWire, RPC_ERROR } from "./rpc.ts";

/** The smallest seed the agent accepts, in bytes. */
export const MIN_SEED_BYTES = 32;

/** What {@link configureGuest} applies; every field is optional. */
export interface GuestConfigure {
  /** sethostname and /etc/hostname. */
  readonly hostname?: string;
  /** Replaces the default env of later execs (merged over PATH and HOME, as the boot config's env is). */
  readonly env?: Readonly<Record<string, string>>;
  /** The host's wall clock in ns since the epoch; `true` reads it now (`Date.now()`). */
  readonly time?: number | true;
  /**
   * Bytes mixed into the guest kernel's input pool, followed by a CRNG
   * reseed (at least {@link MIN_SEED_BYTES}); `true` draws 64 fresh bytes
   * from `crypto.getRandomValues`.
   */
  readonly seed?: Uint8Array | true;
}

/** The wire params of `guest.configure`. */
export type GuestConfigureParams = GuestConfigureWire;

function base64(bytes: Uint8Array): string {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

/**
 * The wire params for `c` (a fresh seed and the current clock where asked).
 *
 * @example
 * ```ts
 * import { configureParams } from "./configure.ts";
 * const p = configureParams({ hostname: "job-1", env: { A: "1" }, seed: new Uint8Array(32) });
 * console.log(p.hostname, p.env, p.seed?.length); // job-1 { A: "1" } 44
 * ```
 */
export function configureParams(c: GuestConfigure): GuestConfigureParams {
  const p: GuestConfigureParams = {};
  if (c.hostname !== undefined) p.hostname = c.hostname;
  if (c.env !== undefined) p.env = c.env;
  if (c.time !== undefined) p.timeNs = c.time === true ? Date.now() * 1e6 : c.time;
  if (c.seed !== undefined) p.seed = base64(c.seed === true ? crypto.getRandomValues(new Uint8Array(64)) : c.seed);
  return p;
}

/**
 * Maps the agent's answer to malformed params (-32602 with `data.field`) to
 * an {@link InvalidConfigError} on `guest.<field>`; anything else unchanged.
 *
 * @example
 * ```ts
 * import { configureError } from "./configure.ts";
 * import { AgentError, InvalidConfigError } from "../errors.ts";
 * const e = configureError(new AgentError(-32602, "invalid params: seed: 3 bytes", { field: "seed" }));
 * console.log(e instanceof InvalidConfigError && e.field); // guest.seed
 * ```
 */
export function configureError(e: unknown): unknown {
  if (e instanceof AgentError && e.rpcCode === RPC_ERROR.INVALID_PARAMS) {
    const field = (e.data as { field?: unknown } | undefined)?.field;
    return new InvalidConfigError(`guest.${typeof field === "string" ? field : "configure"}`, e.message, { cause: e });
  }
  return e;
}

/**
 * Applies `c` to the guest behind `agent` in one request, with the agent
 * deadline of every agent call (`KRUNBOX_AGENT_TIMEOUT_MS`) unless
 * `options.timeoutMs` says otherwise. Malformed fields reject with
 * {@link InvalidConfigError} (`field` is `guest.hostname`, `guest.env`,
 * `guest.timeNs` or `guest.seed`) and change nothing in the guest.
 *
 * @example
 * ```ts ignore
 * // Needs a booted guest; tests/e2e/guest_configure_test.ts runs the same.
 * import { AgentClient } from "./client.ts";
 * import { configureGuest } from "./configure.ts";
 * await using agent = await AgentClient.connect("/tmp/agent.sock");
 * await configureGuest(agent, { hostname: "job-1", env: { MODE: "ci" }, time: true, seed: true });
 * ```
 */
export async function configureGuest(
  agent: AgentClient,
  c: GuestConfigure,
  options: Pick<RequestOptions, "signal" | "timeoutMs"> = {},
): Promise<void> {
  try {
    await agent.request("guest.configure", configureParams(c), options);
  } catch (e) {
    throw configureError(e);
  }
}
