/**
 * How a sandbox's secret values reach its runner: one JSON line its starter
 * writes first on the runner's stdin (`{"secrets":[{"env":…,"value":…}]}`),
 * read before anything else when the spec has secrets. The values travel
 * only through that pipe and, from the runner, netd's stdin: never argv, the
 * environment or a file.
 *
 * @module
 */

import { DEFAULTS } from "../settings.ts";
import type { SecretConfig } from "../net/secrets.ts";

/** The most a secrets line may be: every secret at its longest, JSON-escaped, with room for the names. */
const MAX_LINE = DEFAULTS.secretMaxCount * (DEFAULTS.secretMaxBytes * 6 + 1024) + 64;

/**
 * The line a starter writes to the runner's stdin.
 *
 * @example
 * ```ts
 * import { runnerSecretsLine } from "./runner_secrets.ts";
 * const s = { env: "K", placeholder: "p", hosts: ["a.example"], patterns: [], inBody: false, inQuery: false };
 * console.log(runnerSecretsLine([{ secret: s, value: "v" }])); // {"secrets":[{"env":"K","value":"v"}]}\n
 * ```
 */
export function runnerSecretsLine(secrets: readonly { secret: SecretConfig; value: string }[]): string {
  return `${JSON.stringify({ secrets: secrets.map(({ secret, value }) => ({ env: secret.env, value })) })}\n`;
}

/**
 * Reads the secrets line from `r` (the runner's stdin), byte chunks up to the
 * first newline, and returns env name → value. The starter writes nothing
 * else before it, so nothing after the line is consumed in practice; an
 * attached runner's lifeline read goes on from there.
 *
 * @example
 * ```ts
 * import { readRunnerSecrets, runnerSecretsLine } from "./runner_secrets.ts";
 * const s = { env: "K", placeholder: "p", hosts: ["a.example"], patterns: [], inBody: false, inQuery: false };
 * const bytes = new TextEncoder().encode(runnerSecretsLine([{ secret: s, value: "v" }]));
 * let done = false;
 * const r = { read: (b: Uint8Array) => Promise.resolve(done ? null : (done = true, b.set(bytes), bytes.length)) };
 * console.log((await readRunnerSecrets(r)).get("K")); // v
 * ```
 */
export async function readRunnerSecrets(
  r: { read(b: Uint8Array): Promise<number | null> },
): Promise<Map<string, string>> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const buf = new Uint8Array(64 << 10);
  for (;;) {
    const n = await r.read(buf);
    if (n === null) throw new Error("the runner's stdin ended before the secrets line");
    const chunk = buf.slice(0, n);
    const nl = chunk.indexOf(10);
    chunks.push(nl >= 0 ? chunk.subarray(0, nl) : chunk);
    size += n;
    if (nl >= 0) break;
    if (size > MAX_LINE) throw new Error(`the secrets line is longer than ${MAX_LINE} bytes`);
  }
  const all = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(all));
  } catch {
    throw new Error("the secrets line is not JSON"); // never echo it: it holds values
  } finally {
    all.fill(0);
    buf.fill(0);
  }
  const list = (parsed as { secrets?: unknown })?.secrets;
  if (!Array.isArray(list)) throw new Error("the secrets line has no secrets array");
  const out = new Map<string, string>();
  for (const e of list as { env?: unknown; value?: unknown }[]) {
    if (typeof e?.env !== "string" || typeof e.value !== "string") throw new Error("a secret without env or value");
    out.set(e.env, e.value);
  }
  return out;
}
