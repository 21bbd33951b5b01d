/**
 * A client for the OCI distribution API v2: resolves a reference to a
 * platform manifest and its image config (every byte verified against the
 * digest it was addressed by) and streams blobs, with Bearer-token and Basic
 * authentication, redirects and resumable ranges.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { ImageError } from "../errors.ts";
import { checkDigest, type DigestAlgorithm, type ImageReference, isInsecureRegistry } from "./reference.ts";
import { concatBytes } from "../util/bytes.ts";

/**
 * Media types of the manifests krunbox understands.
 *
 * @example
 * ```ts
 * import { MediaType } from "./registry.ts";
 * const headers = { "content-type": MediaType.OCI_INDEX };
 * ```
 */
export const MediaType = {
  /** OCI image index (multi-platform). */
  OCI_INDEX: "application/vnd.oci.image.index.v1+json",
  /** Docker manifest list v2 (multi-platform). */
  DOCKER_LIST: "application/vnd.docker.distribution.manifest.list.v2+json",
  /** OCI image manifest. */
  OCI_MANIFEST: "application/vnd.oci.image.manifest.v1+json",
  /** Docker image manifest v2 schema 2. */
  DOCKER_MANIFEST: "application/vnd.docker.distribution.manifest.v2+json",
  /** OCI image config. */
  OCI_CONFIG: "application/vnd.oci.image.config.v1+json",
  /** Docker image config. */
  DOCKER_CONFIG: "application/vnd.docker.container.image.v1+json",
} as const;

const MANIFEST_ACCEPT = [
  MediaType.OCI_INDEX,
  MediaType.DOCKER_LIST,
  MediaType.OCI_MANIFEST,
  MediaType.DOCKER_MANIFEST,
].join(", ");

/** Largest manifest or index accepted (as containerd). */
const MANIFEST_LIMIT = 4 * 1024 * 1024;
/** Largest image config accepted. */
const CONFIG_LIMIT = 16 * 1024 * 1024;
/** Largest error body read for a message. */
const ERROR_BODY_LIMIT = 64 * 1024;
const MAX_REDIRECTS = 10;

/**
 * Credentials for a registry.
 *
 * @example
 * ```ts
 * import type { BasicAuth } from "./registry.ts";
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
 * An OS and CPU architecture an image is built for.
 *
 * @example
 * ```ts
 * import type { Platform } from "./registry.ts";
 * const arm: Platform = { os: "linux", architecture: "arm64", variant: "v8" };
 * ```
 */
export interface Platform {
  /** `linux`. */
  os: string;
  /** `amd64`, `arm64`, … (GOARCH names). */
  architecture: string;
  /** CPU variant, e.g. `v8` for arm64; ignored for amd64. */
  variant?: string;
}

/**
 * A content descriptor: what a manifest says about a blob or another manifest.
 *
 * @example
 * ```ts
 * import type { Descriptor } from "./registry.ts";
 * const layer: Descriptor = {
 *   mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
 *   digest: "sha256:" + "0".repeat(64),
 *   size: 1234,
 * };
 * ```
 */
export interface Descriptor {
  /** Media type of the referenced content. */
  mediaType: string;
  /** Digest of the referenced content. */
  digest: string;
  /** Size in bytes of the referenced content. */
  size: number;
  /** Free-form annotations. */
  annotations?: Record<string, string>;
  /** Alternative download URLs (foreign layers); krunbox ignores them. */
  urls?: string[];
}

/**
 * An entry of an image index / manifest list.
 *
 * @example
 * ```ts
 * import type { IndexEntry } from "./registry.ts";
 * const entry: IndexEntry = {
 *   mediaType: "application/vnd.oci.image.manifest.v1+json",
 *   digest: "sha256:" + "0".repeat(64),
 *   size: 500,
 *   platform: { os: "linux", architecture: "amd64" },
 * };
 * ```
 */
export interface IndexEntry extends Descriptor {
  /** The platform of the referenced manifest. */
  platform?: Platform & { "os.version"?: string; "os.features"?: string[] };
}

/**
 * An OCI image index or Docker manifest list.
 *
 * @example
 * ```ts
 * import { type ImageIndex, MediaType } from "./registry.ts";
 * const index: ImageIndex = { schemaVersion: 2, mediaType: MediaType.OCI_INDEX, manifests: [] };
 * ```
 */
export interface ImageIndex {
  /** Always 2. */
  schemaVersion: 2;
  /** Index media type (from the document or the response's Content-Type). */
  mediaType: string;
  /** One entry per platform (and sometimes attestations). */
  manifests: IndexEntry[];
  /** Free-form annotations. */
  annotations?: Record<string, string>;
}

/**
 * An OCI image manifest or Docker manifest v2 schema 2.
 *
 * @example
 * ```ts
 * import { RegistryClient } from "./registry.ts";
 * import { parseReference } from "./reference.ts";
 * const { manifest } = await new RegistryClient(parseReference("127.0.0.1:5000/app:v1")).resolve();
 * for (const layer of manifest.layers) console.log(layer.mediaType, layer.digest, layer.size);
 * ```
 */
export interface ImageManifest {
  /** Always 2. */
  schemaVersion: 2;
  /** Manifest media type (from the document or the response's Content-Type). */
  mediaType: string;
  /** The image config blob. */
  config: Descriptor;
  /** The layer blobs, lowest first. */
  layers: Descriptor[];
  /** Free-form annotations. */
  annotations?: Record<string, string>;
}

/**
 * The runtime defaults of an image (the `config` member of an image config).
 *
 * @example
 * ```ts
 * import type { ImageRuntimeConfig } from "./registry.ts";
 * const rc: ImageRuntimeConfig = { Entrypoint: ["/bin/sh", "-c"], Cmd: ["echo hi"], Env: ["PATH=/bin"] };
 * const argv = [...(rc.Entrypoint ?? []), ...(rc.Cmd ?? [])];
 * ```
 */
export interface ImageRuntimeConfig {
  /** Environment, `KEY=value`. */
  Env?: string[];
  /** Entrypoint argv. */
  Entrypoint?: string[] | null;
  /** Default arguments. */
  Cmd?: string[] | null;
  /** Working directory. */
  WorkingDir?: string;
  /** User (`name`, `uid`, `uid:gid`). */
  User?: string;
  /** Labels. */
  Labels?: Record<string, string> | null;
  /** Ports, e.g. `{"80/tcp": {}}`. */
  ExposedPorts?: Record<string, unknown> | null;
  /** Volumes, e.g. `{"/data": {}}`. */
  Volumes?: Record<string, unknown> | null;
  /** Signal to stop the container. */
  StopSignal?: string;
}

/**
 * A parsed image config (OCI image spec "config").
 *
 * @example
 * ```ts
 * import { RegistryClient } from "./registry.ts";
 * import { parseReference } from "./reference.ts";
 * const { config } = await new RegistryClient(parseReference("127.0.0.1:5000/app:v1")).resolve();
 * console.log(config.architecture, config.config?.Env, config.rootfs?.diff_ids);
 * ```
 */
export interface ImageConfig {
  /** CPU architecture. */
  architecture?: string;
  /** Operating system. */
  os?: string;
  /** CPU variant. */
  variant?: string;
  /** Creation time (RFC 3339). */
  created?: string;
  /** Runtime defaults. */
  config?: ImageRuntimeConfig;
  /** Uncompressed layer digests. */
  rootfs?: { type: string; diff_ids: string[] };
  /** Build history. */
  history?: unknown[];
  /** Any other member of the config document. */
  [key: string]: unknown;
}

/**
 * What {@link RegistryClient.resolve} found.
 *
 * @example
 * ```ts
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
 * ```ts
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
 * const resume: BlobOptions = { offset: (await Deno.stat("/tmp/partial.blob")).size };
 * ```
 */
export interface BlobOptions {
  /** Resume at this byte (sends `Range: bytes=offset-`). */
  offset?: number;
  /** Aborts this request and its body (besides the client's own signal). */
  signal?: AbortSignal;
}

interface RegistryErrorBody {
  codes: string[];
  message: string;
}

interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

interface CachedToken {
  header: string;
  expiresAt: number;
}

/**
 * Hashes a byte stream while passing it through unchanged, so a blob can be
 * verified while it is streamed into decompression. When `expected` (and/or
 * `expectedSize`) is given the stream errors with
 * `ImageError("IMAGE_DIGEST_MISMATCH")` at the end on a mismatch (or as
 * soon as the stream grows past `expectedSize`), so consumers downstream see
 * the failure; read {@link DigestStream.digest} and
 * {@link DigestStream.bytes} once it has finished.
 *
 * @example
 * ```ts
 * import { DigestStream } from "./registry.ts";
 * const hasher = new DigestStream();
 * await new Blob(["hello"]).stream().pipeThrough(hasher).pipeTo(new WritableStream());
 * console.log(hasher.digest, hasher.bytes); // sha256:2cf24dba… 5
 * ```
 */
export class DigestStream extends TransformStream<Uint8Array, Uint8Array<ArrayBuffer>> {
  /** Hash algorithm, from `expected` (default sha256). */
  readonly algorithm: DigestAlgorithm;
  readonly #state: { bytes: number; digest?: string; update(chunk: Uint8Array): void };

  /** A pass-through hasher; see {@link DigestStreamOptions}. */
  constructor(options: DigestStreamOptions = {}) {
    const algorithm = options.expected === undefined ? "sha256" : checkDigest(options.expected, "expected digest");
    const hash = createHash(algorithm);
    const what = options.what ?? "blob";
    const state: { bytes: number; digest?: string; update(chunk: Uint8Array): void } = {
      bytes: 0,
      update(chunk: Uint8Array) {
        state.bytes += chunk.byteLength;
        if (options.expectedSize !== undefined && state.bytes > options.expectedSize) {
          throw new ImageError(
            "IMAGE_DIGEST_MISMATCH",
            `${what}${
              options.expected ? ` ${options.expected}` : ""
            } is larger than the expected ${options.expectedSize} bytes`,
          );
        }
        hash.update(chunk);
      },
    };
    super({
      transform(chunk, controller) {
        state.update(chunk);
        // fetch bodies and files yield ArrayBuffer-backed chunks; copy the rare shared-memory one
        controller.enqueue(chunk.buffer instanceof ArrayBuffer ? chunk as Uint8Array<ArrayBuffer> : chunk.slice());
      },
      flush() {
        state.digest = `${algorithm}:${hash.digest("hex")}`;
        if (options.expectedSize !== undefined && state.bytes !== options.expectedSize) {
          throw new ImageError(
            "IMAGE_DIGEST_MISMATCH",
            `${what}${
              options.expected ? ` ${options.expected}` : ""
            } has ${state.bytes} bytes, expected ${options.expectedSize}`,
          );
        }
        if (options.expected !== undefined && state.digest !== options.expected) {
          throw new ImageError(
            "IMAGE_DIGEST_MISMATCH",
            `${what} digest mismatch: expected ${options.expected}, got ${state.digest} (${state.bytes} bytes)`,
          );
        }
      },
    });
    this.algorithm = algorithm;
    this.#state = state;
  }

  /**
   * Hashes bytes that are not streamed through (e.g. the part of a resumed
   * download already on disk). Call it before any chunk flows.
   *
   * @example
   * ```ts
   * import { DigestStream } from "./registry.ts";
   * const hasher = new DigestStream();
   * hasher.feed(new TextEncoder().encode("hel"));
   * await new Blob(["lo"]).stream().pipeThrough(hasher).pipeTo(new WritableStream());
   * console.log(hasher.bytes); // 5
   * ```
   */
  feed(bytes: Uint8Array): void {
    if (this.#state.digest !== undefined) throw new Error("DigestStream.feed() after the stream finished");
    this.#state.update(bytes);
  }

  /** Bytes hashed so far. */
  get bytes(): number {
    return this.#state.bytes;
  }

  /** `algorithm:hex` of everything hashed; throws until the stream has finished. */
  get digest(): string {
    if (this.#state.digest === undefined) throw new Error("DigestStream.digest read before the stream finished");
    return this.#state.digest;
  }

  /** Whether the stream has finished and {@link DigestStream.digest} is available. */
  get done(): boolean {
    return this.#state.digest !== undefined;
  }
}

/**
 * Options of {@link DigestStream} / {@link digestStream}.
 *
 * @example
 * ```ts
 * import { digestStream, type DigestStreamOptions } from "./registry.ts";
 * const options: DigestStreamOptions = { expected: "sha256:" + "0".repeat(64), expectedSize: 1234, what: "layer 1" };
 * const hasher = digestStream(options);
 * ```
 */
export interface DigestStreamOptions {
  /** The digest the bytes must have; also picks the algorithm. */
  expected?: string;
  /** The exact size the bytes must have. */
  expectedSize?: number;
  /** What the bytes are, for error messages (default "blob"). */
  what?: string;
}

/**
 * Creates a {@link DigestStream}: a pass-through TransformStream that
 * hashes what flows through it and, with `expected`, errors on a mismatch.
 *
 * @example
 * ```ts
 * import { digestStream, RegistryClient } from "./registry.ts";
 * import { parseReference } from "./reference.ts";
 * const client = new RegistryClient(parseReference("127.0.0.1:5000/app:v1"));
 * const { manifest } = await client.resolve();
 * const layer = manifest.layers[0];
 * const { body } = await client.blob(layer.digest);
 * const hasher = digestStream({ expected: layer.digest, expectedSize: layer.size });
 * await body.pipeThrough(hasher).pipeThrough(new DecompressionStream("gzip")).pipeTo(new WritableStream());
 * console.log(hasher.digest === layer.digest); // true, else the pipe rejected with IMAGE_DIGEST_MISMATCH
 * ```
 */
export function digestStream(options: DigestStreamOptions = {}): DigestStream {
  return new DigestStream(options);
}

/**
 * The digest (`sha256:<hex>` by default) of some bytes.
 *
 * @example
 * ```ts
 * import { digestOf } from "./registry.ts";
 * console.log(digestOf(new TextEncoder().encode("{}"))); // sha256:44136fa3…
 * ```
 */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = "sha256"): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest("hex")}`;
}

/** Splits a `WWW-Authenticate` value into challenges (RFC 7235). */
function parseChallenges(header: string | null): Challenge[] {
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

function formatPlatform(p: Partial<Platform> | undefined): string {
  if (!p) return "unknown";
  return `${p.os ?? "?"}/${p.architecture ?? "?"}${p.variant ? `/${p.variant}` : ""}`;
}

function platformMatches(entry: IndexEntry, want: Platform): boolean {
  const p = entry.platform;
  if (!p || p.os !== want.os || p.architecture !== want.architecture) return false;
  if (want.architecture === "amd64" || want.variant === undefined) return true;
  const norm = (v: string | undefined) => (want.architecture === "arm64" && (v === undefined || v === "v8") ? "v8" : v);
  return norm(p.variant) === norm(want.variant);
}

function isDescriptor(d: unknown): d is Descriptor {
  if (typeof d !== "object" || d === null) return false;
  const o = d as Record<string, unknown>;
  return typeof o.mediaType === "string" && typeof o.digest === "string" && Number.isSafeInteger(o.size) &&
    (o.size as number) >= 0;
}

async function readLimited(body: ReadableStream<Uint8Array> | null, limit: number, what: string): Promise<Uint8Array> {
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
 * ```ts
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
  readonly #auth?: BasicAuth;
  readonly #insecure: boolean;
  readonly #signal?: AbortSignal;
  /** Tokens by `realm service scope`. */
  readonly #tokens = new Map<string, CachedToken>();
  /** Token requests in flight, so parallel requests share one. */
  readonly #pendingTokens = new Map<string, Promise<CachedToken>>();
  /** The key of the token to send. */
  #scope?: string;
  #basic = false;

  /** A client for `ref`'s repository; no request is made until {@link RegistryClient.resolve} or {@link RegistryClient.blob}. */
  constructor(ref: ImageReference, options: RegistryClientOptions = {}) {
    this.ref = ref;
    this.#auth = options.auth;
    this.#insecure = options.insecure ?? isInsecureRegistry(ref.registry);
    this.#signal = options.signal;
    this.baseUrl = `${this.#insecure ? "http" : "https"}://${ref.apiHost}`;
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
   * ```ts
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
    const configBytes = await this.#fetchBlobBytes(manifest.config, CONFIG_LIMIT, "image config");
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
   * ```ts
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
    throw await this.#httpError(res, what);
  }

  /** GETs and verifies a manifest or index. */
  async #fetchManifest(
    reference: string,
    expectedDigest: string | undefined,
    expectedSize?: number,
  ): Promise<{ digest: string; doc: ImageManifest | ImageIndex }> {
    const what = `manifest ${this.ref.name}${reference.includes(":") ? "@" : ":"}${reference}`;
    const res = await this.#request(`manifests/${reference}`, { accept: MANIFEST_ACCEPT }, what);
    if (res.status !== 200) throw await this.#httpError(res, what);
    const bytes = await readLimited(res.body, MANIFEST_LIMIT, what);
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
      const authorization = this.#authorization();
      if (authorization) h.set("authorization", authorization);
      const res = await this.#fetch(url, h, what, signal);
      if (res.status !== 401) return res;
      const challenges = parseChallenges(res.headers.get("www-authenticate"));
      const body = await this.#readError(res);
      if (attempt > 0) {
        const who = this.#auth ? `user "${this.#auth.username}"` : "anonymous access";
        throw new ImageError(
          "IMAGE_AUTH",
          `${what}: the registry ${this.ref.registry} denied ${who}` +
            (this.#auth ? " (wrong credentials, or no pull permission)" : "; it may need credentials") +
            (body.message ? `: ${body.message}` : ""),
          { cause: body },
        );
      }
      await this.#answer(challenges, what, body);
    }
  }

  #authorization(): string | undefined {
    if (this.#basic && this.#auth) return basicHeader(this.#auth);
    if (this.#scope === undefined) return undefined;
    const cached = this.#tokens.get(this.#scope);
    if (cached && cached.expiresAt > Date.now()) return cached.header;
    return undefined;
  }

  /** Answers a 401's challenges: fetch a token for Bearer, use the credentials for Basic. */
  async #answer(challenges: Challenge[], what: string, body: RegistryErrorBody): Promise<void> {
    const bearer = challenges.find((c) => c.scheme === "bearer");
    if (bearer) {
      const realm = bearer.params.realm;
      if (!realm) throw new ImageError("IMAGE_AUTH", `${what}: the registry's Bearer challenge has no realm`);
      const scope = bearer.params.scope ?? `repository:${this.ref.repository}:pull`;
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
      if (!this.#auth) {
        throw new ImageError(
          "IMAGE_AUTH",
          `${what}: the registry ${this.ref.registry} requires credentials (Basic auth); pass auth: { kind: "basic", username, password }` +
            (body.message ? ` (${body.message})` : ""),
          { cause: body },
        );
      }
      this.#checkSafeForCredentials(new URL(this.baseUrl), what);
      this.#basic = true;
      return;
    }
    throw new ImageError(
      "IMAGE_AUTH",
      `${what}: the registry ${this.ref.registry} answered 401 with no usable challenge ` +
        `(WWW-Authenticate: ${challenges.map((c) => c.scheme).join(", ") || "missing"})` +
        (body.message ? `: ${body.message}` : ""),
      { cause: body },
    );
  }

  #checkSafeForCredentials(url: URL, what: string): void {
    if (url.protocol === "https:" || this.#insecure || isInsecureRegistry(url.host)) return;
    throw new ImageError(
      "IMAGE_AUTH",
      `${what}: refusing to send credentials over plain HTTP to ${url.origin}; use HTTPS or insecure: true`,
    );
  }

  /** GETs a token from a Bearer realm. */
  async #token(realm: string, service: string | undefined, scope: string, what: string): Promise<CachedToken> {
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
    if (this.#auth) {
      this.#checkSafeForCredentials(url, what);
      url.searchParams.set("account", this.#auth.username);
      headers.set("authorization", basicHeader(this.#auth));
    }
    const res = await this.#fetch(url.href, headers, `token for ${what}`);
    if (res.status === 401 || res.status === 403) {
      const body = await this.#readError(res);
      throw new ImageError(
        "IMAGE_AUTH",
        `${what}: the token service ${url.origin}${url.pathname} rejected ` +
          (this.#auth ? `the credentials of user "${this.#auth.username}"` : "anonymous access") +
          ` (HTTP ${res.status})${body.message ? `: ${body.message}` : ""}`,
        { cause: body },
      );
    }
    if (res.status !== 200) throw await this.#httpError(res, `token for ${what}`);
    let json: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      json = JSON.parse(new TextDecoder().decode(await readLimited(res.body, MANIFEST_LIMIT, "token response")));
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

  /** fetch with manual redirects: Authorization only to the first origin, never https → http. */
  async #fetch(url: string, headers: Headers, what: string, callSignal?: AbortSignal): Promise<Response> {
    const signal = callSignal && this.#signal
      ? AbortSignal.any([callSignal, this.#signal])
      : callSignal ?? this.#signal;
    let current = new URL(url);
    const origin = current.origin;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
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
      if (current.protocol === "https:" && next.protocol !== "https:" && !this.#insecure) {
        throw new ImageError("IMAGE_PULL", `${what}: refusing a redirect from HTTPS to ${next.origin}`);
      }
      current = next;
    }
    throw new ImageError("IMAGE_PULL", `${what}: more than ${MAX_REDIRECTS} redirects`);
  }

  /** Reads a registry error body: `{"errors":[{code,message,detail}]}` or text. */
  async #readError(res: Response): Promise<RegistryErrorBody> {
    let text = "";
    try {
      text = new TextDecoder().decode(await readLimited(res.body, ERROR_BODY_LIMIT, "error body"));
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

  /** The ImageError for an unexpected HTTP status. */
  async #httpError(res: Response, what: string): Promise<ImageError> {
    const body = await this.#readError(res);
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
}

function basicHeader(auth: BasicAuth): string {
  const bytes = new TextEncoder().encode(`${auth.username}:${auth.password}`);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return `Basic ${btoa(bin)}`;
}
