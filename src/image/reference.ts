/**
 * OCI / Docker image references: `[registry[:port]/]path[:tag][@digest]`,
 * parsed by the grammar of the distribution spec and normalized the way the
 * Docker CLI does it (`alpine` is `docker.io/library/alpine:latest`).
 *
 * @module
 */

import { ImageError } from "../errors.ts";

/**
 * The registry name Docker Hub references normalize to.
 *
 * @example
 * ```ts
 * import { DOCKER_HUB, parseReference } from "./reference.ts";
 * console.log(parseReference("alpine").registry === DOCKER_HUB); // true
 * ```
 */
export const DOCKER_HUB = "docker.io";

/**
 * The host that serves Docker Hub's registry API.
 *
 * @example
 * ```ts
 * import { DOCKER_HUB_API_HOST, parseReference } from "./reference.ts";
 * console.log(parseReference("alpine").apiHost === DOCKER_HUB_API_HOST); // true
 * ```
 */
export const DOCKER_HUB_API_HOST = "registry-1.docker.io";

/** Aliases of Docker Hub that normalize to {@link DOCKER_HUB}. */
const DOCKER_HUB_ALIASES = new Set(["docker.io", "index.docker.io", "registry-1.docker.io"]);

/** Longest repository name (registry included), as in the distribution reference package. */
const NAME_MAX = 255;

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const IPV6_HOST = /^\[([0-9a-fA-F:.]+)\]$/;
const DIGEST = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;
const DIGEST_HEX: Record<string, RegExp> = {
  sha256: /^[a-f0-9]{64}$/,
  sha512: /^[a-f0-9]{128}$/,
};

/**
 * A digest algorithm krunbox can verify.
 *
 * @example
 * ```ts
 * import { checkDigest, type DigestAlgorithm } from "./reference.ts";
 * const algorithm: DigestAlgorithm = checkDigest("sha512:" + "0".repeat(128)); // "sha512"
 * ```
 */
export type DigestAlgorithm = "sha256" | "sha512";

function invalid(input: string, detail: string): ImageError {
  return new ImageError("IMAGE_INVALID", `invalid image reference ${JSON.stringify(input)}: ${detail}`);
}

/**
 * Checks that `digest` is a well-formed content digest krunbox can verify
 * (`sha256:` + 64 lowercase hex, or `sha512:` + 128) and returns its
 * algorithm; throws `ImageError("IMAGE_INVALID")` saying what is wrong.
 * `what` names the digest in the message (e.g. "layer digest").
 *
 * @example
 * ```ts
 * import { checkDigest } from "./reference.ts";
 * checkDigest("sha256:" + "a".repeat(64)); // "sha256"
 * ```
 */
export function checkDigest(digest: string, what = "digest"): DigestAlgorithm {
  const problem = digestProblem(digest);
  if (problem) throw new ImageError("IMAGE_INVALID", `invalid ${what} ${JSON.stringify(digest)}: ${problem}`);
  return digest.slice(0, digest.indexOf(":")) as DigestAlgorithm;
}

function digestProblem(digest: unknown): string | undefined {
  if (typeof digest !== "string" || digest === "") return "it is empty";
  const m = DIGEST.exec(digest);
  if (!m) return "a digest is <algorithm>:<hex>, e.g. sha256:<64 lowercase hex characters>";
  const [, algorithm, hex] = m;
  const pattern = DIGEST_HEX[algorithm];
  if (!pattern) return `unsupported digest algorithm "${algorithm}" (sha256 or sha512)`;
  if (!pattern.test(hex)) {
    const want = algorithm === "sha256" ? 64 : 128;
    return `a ${algorithm} digest has exactly ${want} lowercase hex characters, got ${hex.length}` +
      (/[A-F]/.test(hex) ? " with uppercase letters" : /[^a-f0-9]/i.test(hex) ? " with non-hex characters" : "");
  }
  return undefined;
}

function registryProblem(registry: string): string | undefined {
  let host = registry;
  let port: string | undefined;
  if (registry.startsWith("[")) {
    const close = registry.indexOf("]");
    if (close < 0) return `registry "${registry}" has an unclosed "["`;
    host = registry.slice(0, close + 1);
    const rest = registry.slice(close + 1);
    if (rest !== "") {
      if (!rest.startsWith(":")) return `unexpected "${rest}" after the IPv6 address of registry "${registry}"`;
      port = rest.slice(1);
    }
    if (!IPV6_HOST.test(host)) return `registry "${registry}" is not a valid bracketed IPv6 address`;
  } else {
    const colons = registry.split(":").length - 1;
    if (colons > 1) {
      return `registry "${registry}" has more than one ":"; write IPv6 addresses in brackets ([::1]:5000)`;
    }
    if (colons === 1) [host, port] = registry.split(":");
    if (host === "") return `registry "${registry}" has an empty host name`;
    for (const c of host.split(".")) {
      if (!DOMAIN_COMPONENT.test(c)) {
        return `registry host "${host}" is not a valid host name (letters, digits and "-" between dots)`;
      }
    }
  }
  if (port !== undefined) {
    if (!/^[0-9]+$/.test(port)) return `registry port "${port}" is not a number`;
    const n = Number(port);
    if (n < 1 || n > 65535) return `registry port ${port} is outside 1-65535`;
  }
  return undefined;
}

function pathComponentProblem(c: string): string | undefined {
  if (c === "") return `the repository path has an empty component (a leading, trailing or doubled "/")`;
  if (c === "." || c === "..") return `"${c}" is not a valid repository path component`;
  if (/[A-Z]/.test(c)) return `repository path component "${c}" must be lowercase`;
  if (!PATH_COMPONENT.test(c)) {
    return `repository path component "${c}" is invalid: use lowercase letters and digits, ` +
      `separated by ".", "_", "__" or dashes, starting and ending with a letter or digit`;
  }
  return undefined;
}

/**
 * A parsed, normalized image reference. Create one with
 * {@link parseReference}.
 *
 * @example
 * ```ts
 * import { parseReference } from "./reference.ts";
 * const ref = parseReference("alpine:3.20");
 * console.log(ref.registry, ref.repository, ref.tag); // docker.io library/alpine 3.20
 * console.log(ref.apiHost); // registry-1.docker.io
 * console.log(`${ref}`); // docker.io/library/alpine:3.20
 * ```
 */
export class ImageReference {
  /** Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`, `[::1]:5000`. */
  readonly registry: string;
  /** Repository path inside the registry, e.g. `library/alpine`. */
  readonly repository: string;
  /** Tag; `latest` when the reference had neither tag nor digest; absent for digest-only references. */
  readonly tag?: string;
  /** Content digest (`sha256:…`) when the reference pins one. */
  readonly digest?: string;

  private constructor(registry: string, repository: string, tag: string | undefined, digest: string | undefined) {
    this.registry = registry;
    this.repository = repository;
    if (tag !== undefined) this.tag = tag;
    if (digest !== undefined) this.digest = digest;
    Object.freeze(this);
  }

  /**
   * Parses a reference; the same as {@link parseReference}.
   *
   * @example
   * ```ts
   * import { ImageReference } from "./reference.ts";
   * console.log(ImageReference.parse("localhost:5000/app").toString()); // localhost:5000/app:latest
   * ```
   */
  static parse(input: string): ImageReference {
    if (typeof input !== "string") throw invalid(String(input), "it is not a string");
    if (input.trim() === "") throw invalid(input, "it is empty");
    // deno-lint-ignore no-control-regex
    if (/[\s\x00-\x1f\x7f]/.test(input)) throw invalid(input, "it contains whitespace or control characters");
    if (/^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//.test(input)) {
      throw invalid(input, 'a reference has no URL scheme; write "host[:port]/path[:tag]" without "scheme://"');
    }

    let rest = input;
    let digest: string | undefined;
    const at = rest.indexOf("@");
    if (at >= 0) {
      digest = rest.slice(at + 1);
      rest = rest.slice(0, at);
      if (digest === "") throw invalid(input, 'the digest after "@" is empty');
      if (digest.includes("@")) throw invalid(input, 'it contains more than one "@"');
      const problem = digestProblem(digest);
      if (problem) throw invalid(input, `bad digest: ${problem}`);
    }

    let tag: string | undefined;
    const colon = rest.lastIndexOf(":");
    if (colon > rest.lastIndexOf("/")) {
      tag = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
      if (tag === "") throw invalid(input, 'the tag after ":" is empty');
      if (!TAG.test(tag)) {
        throw invalid(
          input,
          tag.length > 128
            ? `tag is ${tag.length} characters long; the limit is 128`
            : `tag "${tag}" is invalid: use letters, digits, "_", "." and "-", not starting with "." or "-"`,
        );
      }
    }

    if (rest === "") throw invalid(input, "the repository name is empty");
    const components = rest.split("/");
    let registry: string | undefined;
    if (
      components.length > 1 &&
      (components[0].includes(".") || components[0].includes(":") || components[0] === "localhost" ||
        components[0].startsWith("["))
    ) {
      registry = components.shift()!;
      const problem = registryProblem(registry);
      if (problem) throw invalid(input, problem);
      registry = registry.toLowerCase();
    }
    for (const c of components) {
      const problem = pathComponentProblem(c);
      if (problem) throw invalid(input, problem);
    }
    if (rest.length > NAME_MAX) {
      throw invalid(input, `the repository name is ${rest.length} characters long; the limit is ${NAME_MAX}`);
    }

    if (registry === undefined || DOCKER_HUB_ALIASES.has(registry)) {
      registry = DOCKER_HUB;
      if (components.length === 1) components.unshift("library");
    }
    if (tag === undefined && digest === undefined) tag = "latest";
    return new ImageReference(registry, components.join("/"), tag, digest);
  }

  /** The host (and port) that serves the registry API: `registry-1.docker.io` for Docker Hub. */
  get apiHost(): string {
    return this.registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : this.registry;
  }

  /** `registry/repository`, without tag or digest. */
  get name(): string {
    return `${this.registry}/${this.repository}`;
  }

  /** What to ask the registry's manifest endpoint for: the digest when pinned, else the tag. */
  get manifestReference(): string {
    return this.digest ?? this.tag ?? "latest";
  }

  /** Canonical form: `registry/repository[:tag][@digest]`. */
  toString(): string {
    return `${this.name}${this.tag !== undefined ? `:${this.tag}` : ""}${
      this.digest !== undefined ? `@${this.digest}` : ""
    }`;
  }

  /** The same repository pinned at `digest` (the tag is kept for display). */
  withDigest(digest: string): ImageReference {
    checkDigest(digest);
    return new ImageReference(this.registry, this.repository, this.tag, digest);
  }
}

/**
 * Parses an image reference by the distribution spec grammar
 * `[registry[:port]/]path[:tag][@digest]` and normalizes it: no registry
 * means `docker.io`, a one-component Docker Hub path gets `library/`, and no
 * tag or digest means `:latest`. The first path component is a registry
 * when it contains `.` or `:` or is `localhost`. Throws
 * `ImageError("IMAGE_INVALID")` with a message that says what is wrong.
 *
 * @example
 * ```ts
 * import { parseReference } from "./reference.ts";
 * const ref = parseReference("127.0.0.1:5000/tools/app:v1");
 * console.log(ref.registry, ref.repository, ref.tag); // 127.0.0.1:5000 tools/app v1
 * ```
 */
export function parseReference(input: string): ImageReference {
  return ImageReference.parse(input);
}

/**
 * Whether a registry is on the loopback interface (`localhost`,
 * `127.0.0.0/8`, `::1`, with or without a port), where plain HTTP is used.
 *
 * @example
 * ```ts
 * import { isInsecureRegistry } from "./reference.ts";
 * isInsecureRegistry("127.0.0.1:5000"); // true
 * isInsecureRegistry("ghcr.io"); // false
 * ```
 */
export function isInsecureRegistry(registry: string): boolean {
  let host = registry.toLowerCase();
  if (host.startsWith("[")) {
    const close = host.indexOf("]");
    if (close < 0) return false;
    host = host.slice(1, close);
  } else if (host.split(":").length === 2) {
    host = host.slice(0, host.indexOf(":"));
  }
  if (host === "localhost" || host === "localhost.") return true;
  if (host === "::1" || host === "0:0:0:0:0:0:0:1") return true;
  const v4 = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  return v4 !== null && v4.slice(1).every((o) => Number(o) <= 255);
}
