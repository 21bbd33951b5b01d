/**
 * A client for the OCI distribution API v2: resolves a reference to a
 * platform manifest and its image config (every byte verified against the
 * digest it was addressed by) and streams blobs, with redirects and
 * resumable ranges. The documents are typed in `oci.ts`, authentication is
 * `auth.ts`, the HTTP plumbing `http.ts`, blob verification `digest.ts`.
 *
 * @module
 */

import { ImageError } from "../errors.ts";
import { checkDigest, type ImageReference, isInsecureRegistry } from "./reference.ts";
import { type BasicAuth, RegistryAuth } from "./auth.ts";
import { digestOf } from "./digest.ts";
import { getFollowing, httpError, readLimited } from "./http.ts";
import {
  type Descriptor,
  formatPlatform,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  isDescriptor,
  MANIFEST_ACCEPT,
  type Platform,
  platformMatches,
} from "./oci.ts";
import { DEFAULTS } from "../settings.ts";

/**
 * Options of {@link RegistryClient}.
 *
 * @example
 * ```ts
 * import type { RegistryClientOptions } from "./registry.ts";
 * const options: RegistryClientOptions = { insecure: true, signal: AbortSignal.timeout(60_000) };
 * ```
 */
export interface RegistryClientOptions {
  /** Credentials, sent to the registry (Basic) or to its token service (Bearer). */
  auth?: BasicAuth;
  /** Use plain HTTP. Default: true for loopback registries ({@link isInsecureRegistry}), else HTTPS. */
  insecure?: boolean;
  /** Aborts every request of this client; the abort reason is thrown as is. */
  signal?: AbortSignal;
}

/**
 * What {@link RegistryClient.resolve} found.
 *
 * @example
 * ```ts ignore
 * // Needs a registry; tests/e2e/registry_test.ts ("resolve by digest (and by tag+digest) returns the same") runs the same.
 * import { RegistryClient } from "./registry.ts";
 * import { parseReference } from "./reference.ts";
 * const ref = parseReference("127.0.0.1:5000/app:v1");
 * const image = await new RegistryClient(ref).resolve();
 * console.log(ref.withDigest(image.manifestDigest).toString()); // pinned
 * ```
 */
export interface ResolvedImage {
  /** Digest of the platform manifest (what to pin). */
  manifestDigest: string;
  /** Digest of the index or manifest list the platform manifest was picked from, if any. */
  indexDigest?: string;
  /** The platform manifest. */
  manifest: ImageManifest;
  /** The image config, fetched as a blob and verified. */
  config: ImageConfig;
}

/**
 * A blob download from {@link RegistryClient.blob}.
 *
 * @example
 * ```ts ignore
 * // Needs a registry; tests/e2e/registry_test.ts ("Range resume returns the tail, …") runs the same against a local one.
 * import { RegistryClient } from "./registry.ts";
 * import { parseReference } from "./reference.ts";
 * const client = new RegistryClient(parseReference("127.0.0.1:5000/app:v1"));
 * const { body, size, offset } = await client.blob("sha256:" + "0".repeat(64), { offset: 4096 });
 * if (offset === 0) console.log("range ignored: restart from scratch");
 * console.log(size);
 * await body.cancel();
 * ```
 */
export interface BlobResponse {
  /** The bytes, from `offset` to the end. Cancel it if you stop reading. */
  body: ReadableStream<Uint8Array<ArrayBuffer>>;
  /** Total size of the blob in bytes, or -1 when the registry did not say. */
  size: number;
  /**
   * Where `body` starts in the blob: the requested offset when the registry
   * honoured the range, or 0 when it sent the whole blob (restart).
   */
  offset: number;
}

/**
 * Options of {@link RegistryClient.blob}.
 *
 * @example
 * ```ts
 * import type { BlobOptions } from "./registry.ts";
 * // Resume a download after the bytes already on disk.
 * const partial = await Deno.makeTempFile();
 * await Deno.writeFile(partial, new Uint8Array(4096));
 * const resume: BlobOptions = { offset: (await Deno.stat(partial)).size };
 * console.log(resume.offset); // 4096
 * ```
 */
export interface BlobOptions {
  /** Resume at this byte (sends `Range: bytes=offset-`). */
  offset?: number;
  /** Aborts this request and its body (besides the client's own signal). */
  signal?: AbortSignal;
}

/**
 * A client for one repository of an OCI distribution (v2) registry. Uses
 * HTTPS, or plain HTTP for loopback registries or with `insecure: true`.
 * Handles Bearer-token auth (anonymous or with the Basic credentials given,
 * tokens cached per scope) and Basic auth. Errors are `ImageError`s:
 * `IMAGE_AUTH` (credentials missing or rejected), `IMAGE_NOT_FOUND`
 * (unknown repository, tag, manifest, blob or platform),
 * `IMAGE_DIGEST_MISMATCH`, `IMAGE_INVALID` (malformed or unsupported
 * documents), `IMAGE_PULL` (network and other HTTP errors), each with the
 * underlying `cause`.
 *
 * @example
 * ```ts ignore
 * // Needs a registry; tests/e2e/registry_test.ts ("with wrong credentials", "resolve by tag …") runs the same against a local one.
 * import { RegistryClient } from "./registry.ts";
 * import { parseReference } from "./reference.ts";
 * const client = new RegistryClient(parseReference("127.0.0.1:5000/app:v1"), {
 *   auth: { kind: "basic", username: "me", password: "secret" },
 * });
 * const { manifestDigest, manifest, config } = await client.resolve({ os: "linux", architecture: "amd64" });
 * console.log(manifestDigest, manifest.layers.length, config.config?.Entrypoint);
 * ```
 */
export class RegistryClient {
  /** The reference this client resolves. */
  readonly ref: ImageReference;
  /** `http://host:port` or `https://host`. */
  readonly baseUrl: string;
  readonly #insecure: boolean;
  readonly #signal?: AbortSignal;
  readonly #authState: RegistryAuth;

  /** A client for `ref`'s repository; no request is made until {@link RegistryClient.resolve} or {@link RegistryClient.blob}. */
  constructor(ref: ImageReference, options: RegistryClientOptions = {}) {
    this.ref = ref;
    this.#insecure = options.insecure ?? isInsecureRegistry(ref.registry);
    this.#signal = options.signal;
    this.baseUrl = `${this.#insecure ? "http" : "https"}://${ref.apiHost}`;
    this.#authState = new RegistryAuth({
      auth: options.auth,
      registry: ref.registry,
      repository: ref.repository,
      baseUrl: this.baseUrl,
      insecure: this.#insecure,
      get: (url, headers, what) => this.#get(url, headers, what),
    });
  }

  /**
   * Resolves the reference to the manifest for `platform` and its config.
   * An index or manifest list is narrowed to the matching entry (variant
   * ignored for amd64; arm64 without variant counts as v8). Every manifest
   * is verified against the digest it was addressed by (the reference's
   * digest, the registry's `Docker-Content-Digest` for a tag, the index
   * entry's digest), the config against the manifest's descriptor.
   *
   * @example
   * ```ts ignore
   * // Needs the internet (Docker Hub); tests/e2e/registry_test.ts ("resolve by tag …") resolves the same way from a local registry.
   * import { RegistryClient } from "./registry.ts";
   * import { parseReference } from "./reference.ts";
   * const image = await new RegistryClient(parseReference("alpine:3.20")).resolve();
   * console.log(image.manifestDigest, image.config.architecture);
   * ```
   */
  async resolve(platform: Platform = { os: "linux", architecture: "amd64" }): Promise<ResolvedImage> {
    const top = await this.#fetchManifest(this.ref.manifestReference, this.ref.digest);
    let indexDigest: string | undefined;
    let doc = top;
    if ("manifests" in top.doc) {
      indexDigest = top.digest;
      const entries = top.doc.manifests;
      const entry = entries.find((e) => platformMatches(e, platform));
      if (!entry) {
        const available = entries
          .filter((e) => e.platform && e.platform.os !== "unknown")
          .map((e) => formatPlatform(e.platform));
        throw new ImageError(
          "IMAGE_NOT_FOUND",
          `${this.ref} has no ${formatPlatform(platform)} image; available: ${available.join(", ") || "none"}`,
        );
      }
      doc = await this.#fetchManifest(entry.digest, entry.digest, entry.size);
      if ("manifests" in doc.doc) {
        throw new ImageError(
          "IMAGE_INVALID",
          `${this.ref}: the ${
            formatPlatform(platform)
          } entry ${entry.digest} is itself an index; nested indexes are not supported`,
        );
      }
    }
    const manifest = doc.doc as ImageManifest;
    const configBytes = await this.#fetchBlobBytes(manifest.config, DEFAULTS.imageConfigMaxBytes, "image config");
    let config: ImageConfig;
    try {
      config = JSON.parse(new TextDecoder().decode(configBytes));
    } catch (cause) {
      throw new ImageError("IMAGE_INVALID", `${this.ref}: image config ${manifest.config.digest} is not JSON`, {
        cause,
      });
    }
    if (typeof config !== "object" || config === null || Array.isArray(config)) {
      throw new ImageError("IMAGE_INVALID", `${this.ref}: image config ${manifest.config.digest} is not a JSON object`);
    }
    const result: ResolvedImage = { manifestDigest: doc.digest, manifest, config };
    if (indexDigest !== undefined) result.indexDigest = indexDigest;
    return result;
  }

  /**
   * Opens a blob for streaming (`GET /v2/<repo>/blobs/<digest>`, following
   * redirects). With `offset > 0` it asks for `Range: bytes=offset-`; if the
   * registry answers with the whole blob instead of 206, `offset` in the
   * result is 0 and the caller must restart. The bytes are not verified
   * here: pipe them through {@link digestStream}.
   *
   * @example
   * ```ts ignore
   * // Needs a registry; tests/e2e/registry_test.ts ("Range resume returns the tail, …") runs the same against a local one.
   * import { RegistryClient } from "./registry.ts";
   * import { parseReference } from "./reference.ts";
   * const client = new RegistryClient(parseReference("127.0.0.1:5000/app:v1"));
   * const { manifest } = await client.resolve();
   * const { body, size, offset } = await client.blob(manifest.layers[0].digest, { offset: 1024 });
   * console.log(size, offset);
   * await body.cancel();
   * ```
   */
  async blob(digest: string, options: BlobOptions = {}): Promise<BlobResponse> {
    checkDigest(digest, "blob digest");
    const offset = options.offset ?? 0;
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new ImageError("IMAGE_INVALID", `blob offset must be a non-negative integer, got ${offset}`);
    }
    const headers: Record<string, string> = { "accept-encoding": "identity" };
    if (offset > 0) headers.range = `bytes=${offset}-`;
    const what = `blob ${digest} of ${this.ref.name}`;
    const res = await this.#request(`blobs/${digest}`, headers, what, options.signal);
    const length = res.headers.get("content-length");
    const contentLength = length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
    if (res.status === 200) {
      return { body: res.body ?? new Blob().stream(), size: contentLength ?? -1, offset: 0 };
    }
    if (res.status === 206) {
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
      if (!range || Number(range[1]) !== offset) {
        await res.body?.cancel();
        throw new ImageError(
          "IMAGE_PULL",
          `${what}: asked for bytes from ${offset}, the registry sent range "${res.headers.get("content-range")}"`,
        );
      }
      const size = range[3] !== "*" ? Number(range[3]) : Number(range[2]) + 1;
      return { body: res.body ?? new Blob().stream(), size, offset };
    }
    if (res.status === 416 && offset > 0) {
      await res.body?.cancel();
      const total = /^bytes \*\/(\d+)$/.exec(res.headers.get("content-range") ?? "");
      if (total && Number(total[1]) === offset) return { body: new Blob().stream(), size: offset, offset };
      throw new ImageError(
        "IMAGE_PULL",
        `${what}: offset ${offset} is past the end of the blob (${res.headers.get("content-range") ?? "size unknown"})`,
      );
    }
    throw await httpError(res, what);
  }

  /** GETs and verifies a manifest or index. */
  async #fetchManifest(
    reference: string,
    expectedDigest: string | undefined,
    expectedSize?: number,
  ): Promise<{ digest: string; doc: ImageManifest | ImageIndex }> {
    const what = `manifest ${this.ref.name}${reference.includes(":") ? "@" : ":"}${reference}`;
    const res = await this.#request(`manifests/${reference}`, { accept: MANIFEST_ACCEPT }, what);
    if (res.status !== 200) throw await httpError(res, what);
    const bytes = await readLimited(res.body, DEFAULTS.manifestMaxBytes, what);
    const headerDigest = res.headers.get("docker-content-digest") ?? undefined;
    let digest: string;
    if (expectedDigest !== undefined) {
      digest = expectedDigest;
    } else if (headerDigest !== undefined) {
      digest = headerDigest;
      checkDigest(digest, `Docker-Content-Digest of ${what}`);
    } else {
      digest = digestOf(bytes);
    }
    const actual = digestOf(bytes, checkDigest(digest));
    if (actual !== digest) {
      throw new ImageError(
        "IMAGE_DIGEST_MISMATCH",
        `${what}: expected digest ${digest}${expectedDigest === undefined ? " (Docker-Content-Digest)" : ""}, ` +
          `the ${bytes.byteLength} bytes received hash to ${actual}`,
      );
    }
    if (expectedSize !== undefined && bytes.byteLength !== expectedSize) {
      throw new ImageError(
        "IMAGE_INVALID",
        `${what}: the index says ${expectedSize} bytes, the manifest has ${bytes.byteLength}`,
      );
    }
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(new TextDecoder().decode(bytes));
    } catch (cause) {
      throw new ImageError("IMAGE_INVALID", `${what} is not JSON`, { cause });
    }
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      throw new ImageError("IMAGE_INVALID", `${what} is not a JSON object`);
    }
    const contentType = (res.headers.get("content-type") ?? "").split(";")[0].trim();
    const mediaType = typeof json.mediaType === "string" ? json.mediaType : contentType;
    if (json.schemaVersion === 1 || mediaType.startsWith("application/vnd.docker.distribution.manifest.v1")) {
      throw new ImageError(
        "IMAGE_INVALID",
        `${what} is a Docker schema 1 manifest, which is not supported; push the image again with a current tool`,
      );
    }
    if (json.schemaVersion !== 2) {
      throw new ImageError("IMAGE_INVALID", `${what}: unsupported schemaVersion ${JSON.stringify(json.schemaVersion)}`);
    }
    if (Array.isArray(json.manifests)) {
      for (const m of json.manifests) {
        if (!isDescriptor(m)) {
          throw new ImageError("IMAGE_INVALID", `${what}: an index entry is not a valid descriptor`);
        }
        checkDigest(m.digest, `index entry digest in ${what}`);
      }
      return { digest, doc: { ...json, mediaType, manifests: json.manifests } as ImageIndex };
    }
    if (isDescriptor(json.config) && Array.isArray(json.layers)) {
      checkDigest(json.config.digest, `config digest in ${what}`);
      for (const l of json.layers) {
        if (!isDescriptor(l)) throw new ImageError("IMAGE_INVALID", `${what}: a layer is not a valid descriptor`);
        checkDigest(l.digest, `layer digest in ${what}`);
      }
      return { digest, doc: { ...json, mediaType } as unknown as ImageManifest };
    }
    throw new ImageError(
      "IMAGE_INVALID",
      `${what}: unsupported manifest (media type "${
        mediaType || "none"
      }"): neither an image index nor an image manifest`,
    );
  }

  /** GETs a small blob whole and verifies digest and size. */
  async #fetchBlobBytes(desc: Descriptor, limit: number, kind: string): Promise<Uint8Array> {
    if (desc.size > limit) {
      throw new ImageError(
        "IMAGE_INVALID",
        `${this.ref}: ${kind} ${desc.digest} is ${desc.size} bytes (limit ${limit})`,
      );
    }
    const { body } = await this.blob(desc.digest);
    const bytes = await readLimited(body, desc.size, `${kind} ${desc.digest}`).catch((e) => {
      if (e instanceof ImageError && e.code === "IMAGE_INVALID") {
        throw new ImageError(
          "IMAGE_DIGEST_MISMATCH",
          `${this.ref}: ${kind} ${desc.digest} is larger than ${desc.size} bytes`,
        );
      }
      throw e;
    });
    const actual = digestOf(bytes, checkDigest(desc.digest));
    if (actual !== desc.digest || bytes.byteLength !== desc.size) {
      throw new ImageError(
        "IMAGE_DIGEST_MISMATCH",
        `${this.ref}: ${kind} digest mismatch: expected ${desc.digest} (${desc.size} bytes), ` +
          `got ${actual} (${bytes.byteLength} bytes)`,
      );
    }
    return bytes;
  }

  /** A GET of `/v2/<repo>/<path>` with authentication: on 401 answer the challenge once and retry. */
  async #request(
    path: string,
    headers: Record<string, string>,
    what: string,
    signal?: AbortSignal,
  ): Promise<Response> {
    const url = `${this.baseUrl}/v2/${this.ref.repository}/${path}`;
    for (let attempt = 0;; attempt++) {
      const h = new Headers(headers);
      const authorization = this.#authState.authorization();
      if (authorization) h.set("authorization", authorization);
      const res = await this.#get(url, h, what, signal);
      if (res.status !== 401) return res;
      await this.#authState.challenged(res, what, attempt > 0);
    }
  }

  /** {@link getFollowing} under this client's signal (and the call's). */
  #get(url: string, headers: Headers, what: string, callSignal?: AbortSignal): Promise<Response> {
    const signal = callSignal && this.#signal
      ? AbortSignal.any([callSignal, this.#signal])
      : callSignal ?? this.#signal;
    return getFollowing(url, headers, what, { signal, insecure: this.#insecure });
  }
}
