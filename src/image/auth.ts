/**
 * Registry authentication: `WWW-Authenticate` challenges (RFC 7235), Bearer
 * tokens from the registry's token service (anonymous or with the
 * credentials given, cached per scope, shared by parallel requests) and
 * Basic auth. Credentials never travel over plain HTTP to a registry that
 * is not loopback, unless the caller said `insecure`.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { isInsecureRegistry } from "./reference.ts";
import { httpError, readLimited, readRegistryError, type RegistryErrorBody } from "./http.ts";
import { DEFAULTS } from "../settings.ts";

/**
 * Credentials for a registry.
 *
 * @example
 * ```ts
 * import type { BasicAuth } from "./auth.ts";
 * const auth: BasicAuth = { kind: "basic", username: "me", password: Deno.env.get("REGISTRY_TOKEN") ?? "" };
 * ```
 */
export interface BasicAuth {
  /** Always `"basic"`: a user name and password (or access token as password). */
  kind: "basic";
  /** User name. */
  username: string;
  /** Password or personal access token. */
  password: string;
}

/**
 * One challenge of a `WWW-Authenticate` header.
 *
 * @example
 * ```ts
 * import type { Challenge } from "./auth.ts";
 * const bearer: Challenge = { scheme: "bearer", params: { realm: "https://auth.example/token", service: "reg" } };
 * ```
 */
export interface Challenge {
  /** The auth scheme, lower-cased (`bearer`, `basic`). */
  scheme: string;
  /** Its parameters, names lower-cased, quoted values unescaped. */
  params: Record<string, string>;
}

interface CachedToken {
  header: string;
  expiresAt: number;
}

/**
 * Splits a `WWW-Authenticate` value into challenges (RFC 7235): several
 * challenges per header, quoted and token values, backslash escapes.
 *
 * @example
 * ```ts
 * import { parseChallenges } from "./auth.ts";
 * const [c] = parseChallenges('Bearer realm="https://auth.example/token",service="registry"');
 * console.log(c.scheme, c.params.realm); // bearer https://auth.example/token
 * ```
 */
export function parseChallenges(header: string | null): Challenge[] {
  const out: Challenge[] = [];
  if (!header) return out;
  let i = 0;
  const n = header.length;
  const skip = (re: RegExp) => {
    while (i < n && re.test(header[i])) i++;
  };
  const token = () => {
    const start = i;
    while (i < n && /[!#$%&'*+.^_`|~0-9A-Za-z-]/.test(header[i])) i++;
    return header.slice(start, i);
  };
  while (i < n) {
    skip(/[\s,]/);
    const scheme = token();
    if (!scheme) {
      i++;
      continue;
    }
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(challenge);
    for (;;) {
      skip(/[\s,]/);
      const save = i;
      const key = token();
      skip(/\s/);
      if (!key || header[i] !== "=") {
        i = save; // the next challenge's scheme
        break;
      }
      i++; // "="
      skip(/\s/);
      let value = "";
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === "\\" && i + 1 < n) i++;
          value += header[i++];
        }
        i++; // closing quote
      } else {
        value = token();
      }
      challenge.params[key.toLowerCase()] = value;
    }
  }
  return out;
}

/**
 * The `Authorization` value for Basic credentials (UTF-8, base64).
 *
 * @example
 * ```ts
 * import { basicHeader } from "./auth.ts";
 * console.log(basicHeader({ kind: "basic", username: "me", password: "pw" })); // Basic bWU6cHc=
 * ```
 */
export function basicHeader(auth: BasicAuth): string {
  const bytes = new TextEncoder().encode(`${auth.username}:${auth.password}`);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return `Basic ${btoa(bin)}`;
}

/**
 * What {@link RegistryAuth} needs to know about the client it serves.
 *
 * @example
 * ```ts
 * import type { RegistryAuthOptions } from "./auth.ts";
 * const options: RegistryAuthOptions = {
 *   registry: "127.0.0.1:5000",
 *   repository: "app",
 *   baseUrl: "http://127.0.0.1:5000",
 *   insecure: true,
 *   get: (url, headers) => fetch(url, { headers }),
 * };
 * ```
 */
export interface RegistryAuthOptions {
  /** Credentials, sent to the registry (Basic) or to its token service (Bearer). */
  auth?: BasicAuth;
  /** The registry's name, for messages. */
  registry: string;
  /** The repository, for the default token scope (`repository:<name>:pull`). */
  repository: string;
  /** The registry's `http(s)://host[:port]`. */
  baseUrl: string;
  /** Plain HTTP was asked for: credentials may go over it. */
  insecure: boolean;
  /** GETs a URL (the client's redirect-following fetch with its signal). */
  get(url: string, headers: Headers, what: string): Promise<Response>;
}

/**
 * The authentication state of one registry client: which header to send,
 * and how to answer a 401.
 *
 * @example
 * ```ts ignore
 * // Needs a registry; tests/e2e/registry_test.ts ("without credentials", "with wrong credentials") runs this token/Basic flow.
 * import { RegistryAuth } from "./auth.ts";
 * const auth = new RegistryAuth({
 *   registry: "127.0.0.1:5000",
 *   repository: "app",
 *   baseUrl: "http://127.0.0.1:5000",
 *   insecure: true,
 *   get: (url, headers) => fetch(url, { headers }),
 * });
 * const headers = new Headers();
 * const value = auth.authorization();
 * if (value) headers.set("authorization", value);
 * let res = await fetch("http://127.0.0.1:5000/v2/app/tags/list", { headers });
 * if (res.status === 401) await auth.challenged(res, "tags of app", false); // then retry once
 * ```
 */
export class RegistryAuth {
  readonly #options: RegistryAuthOptions;
  /** Tokens by `realm service scope`. */
  readonly #tokens = new Map<string, CachedToken>();
  /** Token requests in flight, so parallel requests share one. */
  readonly #pendingTokens = new Map<string, Promise<CachedToken>>();
  /** The key of the token to send. */
  #scope?: string;
  #basic = false;

  /** Authentication for the client described by `options`; nothing is sent until a 401 asks for it. */
  constructor(options: RegistryAuthOptions) {
    this.#options = options;
  }

  /** The `Authorization` value to send now, if any (an expired token is not sent). */
  authorization(): string | undefined {
    const auth = this.#options.auth;
    if (this.#basic && auth) return basicHeader(auth);
    if (this.#scope === undefined) return undefined;
    const cached = this.#tokens.get(this.#scope);
    if (cached && cached.expiresAt > Date.now()) return cached.header;
    return undefined;
  }

  /**
   * Handles a 401: reads its challenges and error body, then fetches a
   * token (Bearer) or switches to the credentials (Basic), so the request
   * can be sent again. When `retried` (the answer was already sent once)
   * it throws `ImageError("IMAGE_AUTH")` saying who was denied.
   */
  async challenged(res: Response, what: string, retried: boolean): Promise<void> {
    const challenges = parseChallenges(res.headers.get("www-authenticate"));
    const body = await readRegistryError(res);
    if (retried) {
      const auth = this.#options.auth;
      const who = auth ? `user "${auth.username}"` : "anonymous access";
      throw new ImageError(
        "IMAGE_AUTH",
        `${what}: the registry ${this.#options.registry} denied ${who}` +
          (auth ? " (wrong credentials, or no pull permission)" : "; it may need credentials") +
          (body.message ? `: ${body.message}` : ""),
        { cause: body },
      );
    }
    await this.#answer(challenges, what, body);
  }

  /** Answers a 401's challenges: fetch a token for Bearer, use the credentials for Basic. */
  async #answer(challenges: Challenge[], what: string, body: RegistryErrorBody): Promise<void> {
    const { auth, registry, repository } = this.#options;
    const bearer = challenges.find((c) => c.scheme === "bearer");
    if (bearer) {
      const realm = bearer.params.realm;
      if (!realm) throw new ImageError("IMAGE_AUTH", `${what}: the registry's Bearer challenge has no realm`);
      const scope = bearer.params.scope ?? `repository:${repository}:pull`;
      const key = `${realm} ${bearer.params.service ?? ""} ${scope}`;
      let pending = this.#pendingTokens.get(key);
      if (!pending) {
        pending = this.#token(realm, bearer.params.service, scope, what).finally(() => this.#pendingTokens.delete(key));
        this.#pendingTokens.set(key, pending);
      }
      this.#tokens.set(key, await pending);
      this.#scope = key;
      this.#basic = false;
      return;
    }
    if (challenges.some((c) => c.scheme === "basic")) {
      if (!auth) {
        throw new ImageError(
          "IMAGE_AUTH",
          `${what}: the registry ${registry} requires credentials (Basic auth); pass auth: { kind: "basic", username, password }` +
            (body.message ? ` (${body.message})` : ""),
          { cause: body },
        );
      }
      this.#checkSafeForCredentials(new URL(this.#options.baseUrl), what);
      this.#basic = true;
      return;
    }
    throw new ImageError(
      "IMAGE_AUTH",
      `${what}: the registry ${registry} answered 401 with no usable challenge ` +
        `(WWW-Authenticate: ${challenges.map((c) => c.scheme).join(", ") || "missing"})` +
        (body.message ? `: ${body.message}` : ""),
      { cause: body },
    );
  }

  #checkSafeForCredentials(url: URL, what: string): void {
    if (url.protocol === "https:" || this.#options.insecure || isInsecureRegistry(url.host)) return;
    throw new ImageError(
      "IMAGE_AUTH",
      `${what}: refusing to send credentials over plain HTTP to ${url.origin}; use HTTPS or insecure: true`,
    );
  }

  /** GETs a token from a Bearer realm. */
  async #token(realm: string, service: string | undefined, scope: string, what: string): Promise<CachedToken> {
    const auth = this.#options.auth;
    let url: URL;
    try {
      url = new URL(realm);
    } catch (cause) {
      throw new ImageError("IMAGE_AUTH", `${what}: the token realm ${JSON.stringify(realm)} is not a URL`, { cause });
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new ImageError("IMAGE_AUTH", `${what}: the token realm ${realm} is not an HTTP(S) URL`);
    }
    if (service) url.searchParams.set("service", service);
    for (const s of scope.split(" ").filter(Boolean)) url.searchParams.append("scope", s);
    const headers = new Headers({ accept: "application/json" });
    if (auth) {
      this.#checkSafeForCredentials(url, what);
      url.searchParams.set("account", auth.username);
      headers.set("authorization", basicHeader(auth));
    }
    const res = await this.#options.get(url.href, headers, `token for ${what}`);
    if (res.status === 401 || res.status === 403) {
      const body = await readRegistryError(res);
      throw new ImageError(
        "IMAGE_AUTH",
        `${what}: the token service ${url.origin}${url.pathname} rejected ` +
          (auth ? `the credentials of user "${auth.username}"` : "anonymous access") +
          ` (HTTP ${res.status})${body.message ? `: ${body.message}` : ""}`,
        { cause: body },
      );
    }
    if (res.status !== 200) throw await httpError(res, `token for ${what}`);
    let json: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      const bytes = await readLimited(res.body, DEFAULTS.registryTokenMaxBytes, "token response");
      json = JSON.parse(new TextDecoder().decode(bytes));
    } catch (cause) {
      throw new ImageError("IMAGE_AUTH", `${what}: the token service ${url.origin} did not answer JSON`, { cause });
    }
    const token = typeof json.token === "string" && json.token
      ? json.token
      : typeof json.access_token === "string" && json.access_token
      ? json.access_token
      : undefined;
    if (!token) throw new ImageError("IMAGE_AUTH", `${what}: the token service ${url.origin} returned no token`);
    const expiresIn = typeof json.expires_in === "number" && json.expires_in > 0 ? json.expires_in : 60;
    // renew a little early so a token does not expire between check and use
    return { header: `Bearer ${token}`, expiresAt: Date.now() + Math.max(expiresIn - 10, 1) * 1000 };
  }
}
