/**
 * `networkEvents()`: the network engine's decisions, relayed by the runner
 * (`runner.netEvents`: the recent ones it kept, then each new one as a
 * `runner.netEvent` notification). Events are checked with the same parser
 * as netd's own lines, so a client never yields a malformed one.
 *
 * @module
 */

import type { AgentClient } from "../agent/client.ts";
import { type NetworkEvent, parseNetdLine } from "../net/engine.ts";

/** Options of `networkEvents()`. */
export interface NetworkEventsOptions {
  /** Ends the iteration when aborted. */
  readonly signal?: AbortSignal;
}

/** An event as the runner sends it (JSON: the timestamp as text) back to a {@link NetworkEvent}; undefined if broken. */
function revive(raw: unknown): NetworkEvent | undefined {
  if (typeof raw !== "object" || raw === null) return undefined;
  try {
    const m = parseNetdLine(JSON.stringify({ ...raw, type: "event" }));
    return m.type === "event" ? m.event : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The decisions of a sandbox's network engine: the runner's recent ones
 * first, then each new one as it happens, until the sandbox stops, the
 * consumer breaks out or `signal` aborts. A sandbox without a network
 * yields nothing and ends with it.
 *
 * @example
 * ```ts
 * import { networkEventStream } from "./net_events.ts";
 * // for await (const e of networkEventStream(agent)) console.log(e.action, e.address, e.port);
 * ```
 */
export async function* networkEventStream(
  agent: AgentClient,
  options: NetworkEventsOptions = {},
): AsyncGenerator<NetworkEvent, void, undefined> {
  const live: NetworkEvent[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  const end = () => {
    ended = true;
    wake?.();
  };
  const { id, reply } = agent.requestWithStream("runner.netEvents", {}, (f) => {
    const e = revive((f.header.params as { event?: unknown } | undefined)?.event);
    if (e) {
      live.push(e);
      wake?.();
    }
  });
  options.signal?.addEventListener("abort", end, { once: true });
  agent.closed.then(end, end);
  try {
    if (options.signal?.aborted) return;
    let backlog: unknown[];
    try {
      backlog = (await reply).result.events ?? [];
    } catch (e) {
      if (ended) return;
      throw e;
    }
    for (const raw of backlog) {
      const e = revive(raw);
      if (e) yield e;
      if (ended && options.signal?.aborted) return;
    }
    for (;;) {
      while (live.length > 0) {
        yield live.shift()!;
        if (options.signal?.aborted) return;
      }
      if (ended) return;
      await new Promise<void>((r) => (wake = r));
      wake = undefined;
    }
  } finally {
    options.signal?.removeEventListener("abort", end);
    agent.unsubscribe(id);
  }
}
