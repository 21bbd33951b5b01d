/**
 * The OCI image-spec and distribution documents krunbox reads: media types,
 * descriptors, image indexes (and Docker manifest lists), image manifests
 * and image configs, with the checks and platform matching that go with
 * them. Types and pure functions only: no I/O.
 *
 * @module
 */

/**
 * Media types of the manifests krunbox understands.
 *
 * @example
 * ```ts
 * import { MediaType } from "./oci.ts";
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

/** The `Accept` header of a manifest request: every manifest type above. */
export const MANIFEST_ACCEPT: string = [
  MediaType.OCI_INDEX,
  MediaType.DOCKER_LIST,
  MediaType.OCI_MANIFEST,
  MediaType.DOCKER_MANIFEST,
].join(", ");

/**
 * An OS and CPU architecture an image is built for.
 *
 * @example
 * ```ts
 * import type { Platform } from "./oci.ts";
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
 * import type { Descriptor } from "./oci.ts";
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
 * import type { IndexEntry } from "./oci.ts";
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
 * import { type ImageIndex, MediaType } from "./oci.ts";
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
 * ```ts ignore
 * // Needs a registry; tests/e2e/registry_test.ts ("resolve by tag returns the pushed manifest and its config") runs the same.
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
 * import type { ImageRuntimeConfig } from "./oci.ts";
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
 * ```ts ignore
 * // Needs a registry; tests/e2e/registry_test.ts ("resolve by tag returns the pushed manifest and its config") runs the same.
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
 * A platform as `os/architecture[/variant]`, for messages.
 *
 * @example
 * ```ts
 * import { formatPlatform } from "./oci.ts";
 * console.log(formatPlatform({ os: "linux", architecture: "arm64", variant: "v8" })); // linux/arm64/v8
 * ```
 */
export function formatPlatform(p: Partial<Platform> | undefined): string {
  if (!p) return "unknown";
  return `${p.os ?? "?"}/${p.architecture ?? "?"}${p.variant ? `/${p.variant}` : ""}`;
}

/**
 * Whether an index entry is for `want`: the variant is ignored for amd64
 * (and when `want` has none); arm64 without a variant counts as v8.
 *
 * @example
 * ```ts
 * import { platformMatches } from "./oci.ts";
 * const entry = { mediaType: "m", digest: "sha256:" + "0".repeat(64), size: 1, platform: { os: "linux", architecture: "arm64" } };
 * console.log(platformMatches(entry, { os: "linux", architecture: "arm64", variant: "v8" })); // true
 * ```
 */
export function platformMatches(entry: IndexEntry, want: Platform): boolean {
  const p = entry.platform;
  if (!p || p.os !== want.os || p.architecture !== want.architecture) return false;
  if (want.architecture === "amd64" || want.variant === undefined) return true;
  const norm = (v: string | undefined) => (want.architecture === "arm64" && (v === undefined || v === "v8") ? "v8" : v);
  return norm(p.variant) === norm(want.variant);
}

/**
 * Whether a parsed JSON value has a descriptor's required members (media
 * type, digest, a non-negative integer size); the digest's syntax is not
 * checked here.
 *
 * @example
 * ```ts
 * import { isDescriptor } from "./oci.ts";
 * console.log(isDescriptor({ mediaType: "m", digest: "sha256:…", size: -1 })); // false
 * ```
 */
export function isDescriptor(d: unknown): d is Descriptor {
  if (typeof d !== "object" || d === null) return false;
  const o = d as Record<string, unknown>;
  return typeof o.mediaType === "string" && typeof o.digest === "string" && Number.isSafeInteger(o.size) &&
    (o.size as number) >= 0;
}
