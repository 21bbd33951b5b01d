/**
 * The HTTP side of talking to a registry, shared by the client and its
 * token service: GETs that follow redirects by hand (Authorization only to
 * the first origin, never HTTPS → HTTP), bodies read with a byte cap, and
 * registry error bodies turned into the `ImageError` a status means.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { concatBytes } from "../util/bytes.ts";
import { DEFAULTS } from "../settings.ts";

/**
 * What a registry's error body said: `{"errors":[{code,message}]}` or text.
 *
 * @example
 * ```ts
 * import type { RegistryErrorBody } from "./http.ts";
 * const denied = (b: RegistryErrorBody) => b.codes.includes("DENIED");
 * ```
 */
export interface RegistryErrorBody {
  /** The `code` of each error, e.g. `MANIFEST_UNKNOWN`. */
  codes: string[];
  /** The errors as one line, or the start of a text body. */
  message: string;
}

/**
 * Options of {@link getFollowing}.
 *
 * @example
 * ```ts
 * import type { GetOptions } from "./http.ts";
 * const options: GetOptions = { insecure: false, signal: AbortSignal.timeout(30_000) };
 * ```
 */
export interface GetOptions {
  /** Aborts the request; its reason is thrown as is. */
  signal?: AbortSignal;
  /** Allow a redirect from HTTPS to plain HTTP. */
  insecure: boolean;
}

/**
 * GETs `url`, following up to {@link DEFAULTS.registryMaxRedirects}
 * redirects by hand: the `authorization` header goes to the first origin
 * only, and HTTPS never redirects to plain HTTP unless `insecure`. Network
 * failures are `ImageError("IMAGE_PULL")`.
 *
 * @example
 * ```ts ignore
 * // Needs a registry; tests/e2e/registry_test.ts runs every registry request through it.
 * import { getFollowing } from "./http.ts";
 * const res = await getFollowing("http://127.0.0.1:5000/v2/", new Headers(), "ping", { insecure: true });
 * console.log(res.status);
 * await res.body?.cancel();
 * ```
 */
export async function getFollowing(
  url: string,
  headers: Headers,
  what: string,
  options: GetOptions,
): Promise<Response> {
  const { signal, insecure } = options;
  let current = new URL(url);
  const origin = current.origin;
  for (let hop = 0; hop <= DEFAULTS.registryMaxRedirects; hop++) {
    const h = new Headers(headers);
    if (current.origin !== origin) h.delete("authorization");
    let res: Response;
    try {
      res = await fetch(current, { method: "GET", headers: h, redirect: "manual", signal });
    } catch (cause) {
      if (signal?.aborted) throw signal.reason;
      throw new ImageError(
        "IMAGE_PULL",
        `${what}: cannot reach ${current.origin}: ${(cause as Error)?.message ?? cause}`,
        { cause },
      );
    }
    if (![301, 302, 303, 307, 308].includes(res.status)) return res;
    await res.body?.cancel();
    const location = res.headers.get("location");
    if (!location) throw new ImageError("IMAGE_PULL", `${what}: HTTP ${res.status} redirect without a Location`);
    const next = new URL(location, current);
    if (current.protocol === "https:" && next.protocol !== "https:" && !insecure) {
      throw new ImageError("IMAGE_PULL", `${what}: refusing a redirect from HTTPS to ${next.origin}`);
    }
    current = next;
  }
  throw new ImageError("IMAGE_PULL", `${what}: more than ${DEFAULTS.registryMaxRedirects} redirects`);
}

/**
 * Reads a whole body, at most `limit` bytes: past it the body is cancelled
 * and `ImageError("IMAGE_INVALID")` thrown.
 *
 * @example
 * ```ts
 * import { readLimited } from "./http.ts";
 * const bytes = await readLimited(new Response("{}").body, 1024, "manifest");
 * console.log(bytes.length); // 2
 * ```
 */
export async function readLimited(
  body: ReadableStream<Uint8Array> | null,
  limit: number,
  what: string,
): Promise<Uint8Array> {
  if (!body) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > limit) {
        await reader.cancel().catch(() => {});
        throw new ImageError("IMAGE_INVALID", `${what} is larger than ${limit} bytes`);
      }
      chunks.push(value);
    }
  } finally {
    reader.releaseLock();
  }
  return concatBytes(chunks);
}

/**
 * Reads a registry error body (at most {@link DEFAULTS.registryErrorBodyMaxBytes}):
 * `{"errors":[{code,message,detail}]}`, `{"message"}`, `{"details"}` or text.
 *
 * @example
 * ```ts
 * import { readRegistryError } from "./http.ts";
 * const body = await readRegistryError(new Response('{"errors":[{"code":"DENIED","message":"no"}]}'));
 * console.log(body.message); // DENIED: no
 * ```
 */
export async function readRegistryError(res: Response): Promise<RegistryErrorBody> {
  let text = "";
  try {
    text = new TextDecoder().decode(await readLimited(res.body, DEFAULTS.registryErrorBodyMaxBytes, "error body"));
  } catch {
    await res.body?.cancel().catch(() => {});
  }
  try {
    const json = JSON.parse(text);
    if (Array.isArray(json?.errors)) {
      const errors = json.errors as { code?: unknown; message?: unknown }[];
      return {
        codes: errors.map((e) => String(e.code ?? "")),
        message: errors.map((e) => [e.code, e.message].filter(Boolean).join(": ")).join("; "),
      };
    }
    if (typeof json?.message === "string") return { codes: [], message: json.message };
    if (typeof json?.details === "string") return { codes: [], message: json.details };
  } catch {
    // not JSON
  }
  return { codes: [], message: text.trim().slice(0, 300) };
}

/**
 * The `ImageError` for an unexpected HTTP status: `IMAGE_NOT_FOUND` (404 or
 * an unknown-name code), `IMAGE_AUTH` (403 or `DENIED`), else `IMAGE_PULL`;
 * the error body is its `cause`.
 *
 * @example
 * ```ts
 * import { httpError } from "./http.ts";
 * const e = await httpError(new Response("gone", { status: 404 }), "manifest app:v1");
 * console.log(e.code); // IMAGE_NOT_FOUND
 * ```
 */
export async function httpError(res: Response, what: string): Promise<ImageError> {
  const body = await readRegistryError(res);
  const detail = `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ""}` +
    (body.message ? `: ${body.message}` : "");
  const unknown = body.codes.some((c) => c === "MANIFEST_UNKNOWN" || c === "NAME_UNKNOWN" || c === "BLOB_UNKNOWN");
  if (res.status === 404 || unknown) {
    return new ImageError("IMAGE_NOT_FOUND", `${what} not found (${detail})`, { cause: body });
  }
  if (res.status === 403 || body.codes.includes("DENIED")) {
    return new ImageError("IMAGE_AUTH", `${what}: access denied (${detail})`, { cause: body });
  }
  return new ImageError("IMAGE_PULL", `${what}: ${detail}`, { cause: body });
}
