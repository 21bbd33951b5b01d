/**
 * A real `docker-registry` (distribution 2.8, Debian package) on a free
 * 127.0.0.1 port with its storage in a temp dir, for the registry tests —
 * without auth, with htpasswd (Basic) auth, or with token (Bearer) auth
 * served by a tiny in-process token service — and {@link pushImage}, which
 * builds an OCI image with umoci from plain directories and pushes it with
 * skopeo.
 *
 * @module
 */

import { which } from "../../src/util/command.ts";
import { digestOf } from "../../src/image/digest.ts";
import { zstdCompress } from "./zstd.ts";

const REALM = "krunbox-test";
const SERVICE = "krunbox-test-registry";
const ISSUER = "krunbox-test-issuer";

/** Credentials the registry accepts. */
export interface RegistryUser {
  /** User name. */
  username: string;
  /** Password. */
  password: string;
}

/** Options of {@link LocalRegistry.start}. */
export interface LocalRegistryOptions {
  /** Require these credentials: Basic auth from htpasswd (default) or Bearer tokens from a token service. */
  auth?: RegistryUser & { scheme?: "basic" | "token" };
}

/** Why the registry tests cannot run here (a missing tool), or undefined. */
export async function missingRegistryTools(...extra: string[]): Promise<string | undefined> {
  const missing: string[] = [];
  for (const tool of ["docker-registry", "umoci", "skopeo", ...extra]) {
    if (!(await which(tool))) missing.push(tool);
  }
  return missing.length ? `missing ${missing.join(", ")} (apt-get install -y ${missing.join(" ")})` : undefined;
}

async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  if (!out.success) {
    throw new Error(
      `\`${cmd} ${args.join(" ")}\` exited with ${out.code}:\n${dec.decode(out.stderr)}${dec.decode(out.stdout)}`,
    );
  }
  return dec.decode(out.stdout);
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function b64url(bytes: Uint8Array | string): string {
  const b = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  let bin = "";
  for (const x of b) bin += String.fromCharCode(x);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

function pemBody(pem: string): string {
  return pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
}

/** One request to the token service. */
export interface TokenRequest {
  /** The `scope` parameters. */
  scope: string[];
  /** The user of the Basic credentials, if any were sent. */
  user?: string;
  /** Whether a token was issued. */
  ok: boolean;
}

/** A token service for distribution's `auth.token`: ES256 JWTs with the signing cert in `x5c`. */
class TokenService {
  private constructor(
    /** Token requests served, by outcome. */
    readonly requests: TokenRequest[],
    readonly server: Deno.HttpServer<Deno.NetAddr>,
    readonly realm: string,
    readonly certPath: string,
  ) {}

  static async start(dir: string, user: RegistryUser): Promise<TokenService> {
    const keyPath = `${dir}/token-key.pem`;
    const certPath = `${dir}/token-cert.pem`;
    await run("openssl", [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      keyPath,
      "-out",
      certPath,
      "-days",
      "2",
      "-subj",
      "/CN=krunbox-test-token",
    ]);
    const der = Uint8Array.from(atob(pemBody(await Deno.readTextFile(keyPath))), (c) => c.charCodeAt(0));
    const key = await crypto.subtle.importKey("pkcs8", der, { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"]);
    const x5c = [pemBody(await Deno.readTextFile(certPath))];
    const requests: TokenRequest[] = [];
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
      const url = new URL(req.url);
      const scope = url.searchParams.getAll("scope");
      const authz = req.headers.get("authorization");
      let subject = "";
      if (authz) {
        const [u, ...p] = atob(authz.replace(/^Basic /, "")).split(":");
        if (u !== user.username || p.join(":") !== user.password) {
          requests.push({ scope, user: u, ok: false });
          return Response.json({ details: "incorrect username or password" }, { status: 401 });
        }
        subject = u;
      }
      requests.push({ scope, user: subject || undefined, ok: true });
      // anonymous callers get a token without access: the registry then answers 401 again
      const access = subject
        ? scope.map((s) => {
          const [type, ...rest] = s.split(":");
          const actions = rest.pop()!.split(",");
          return { type, name: rest.join(":"), actions };
        })
        : [];
      const now = Math.floor(Date.now() / 1000);
      const header = b64url(JSON.stringify({ typ: "JWT", alg: "ES256", x5c }));
      const claims = b64url(JSON.stringify({
        iss: ISSUER,
        sub: subject,
        aud: url.searchParams.get("service"),
        exp: now + 300,
        nbf: now - 10,
        iat: now,
        jti: crypto.randomUUID(),
        access,
      }));
      const signature = new Uint8Array(
        await crypto.subtle.sign(
          { name: "ECDSA", hash: "SHA-256" },
          key,
          new TextEncoder().encode(`${header}.${claims}`),
        ),
      );
      return Response.json({ token: `${header}.${claims}.${b64url(signature)}`, expires_in: 300 });
    });
    return new TokenService(requests, server, `http://127.0.0.1:${server.addr.port}/token`, certPath);
  }

  async stop(): Promise<void> {
    await this.server.shutdown();
  }
}

/** A running `docker-registry serve` on 127.0.0.1. */
export class LocalRegistry implements AsyncDisposable {
  private constructor(
    /** Temp dir with config, storage and log. */
    readonly dir: string,
    /** `127.0.0.1:<port>`. */
    readonly host: string,
    readonly process: Deno.ChildProcess,
    /** The credentials it requires, if any. */
    readonly auth: LocalRegistryOptions["auth"],
    /** The token service (token auth only). */
    readonly tokens: TokenService | undefined,
  ) {}

  /** `http://127.0.0.1:<port>`. */
  get url(): string {
    return `http://${this.host}`;
  }

  /** Starts a registry and waits until `/v2/` answers. */
  static async start(options: LocalRegistryOptions = {}): Promise<LocalRegistry> {
    const dir = await Deno.makeTempDir({ prefix: "krunbox-registry-" });
    const port = freePort();
    let authConfig = "";
    let tokens: TokenService | undefined;
    if (options.auth && (options.auth.scheme ?? "basic") === "basic") {
      const line = await run("htpasswd", ["-Bbn", options.auth.username, options.auth.password]);
      await Deno.writeTextFile(`${dir}/htpasswd`, line.trim() + "\n");
      authConfig = `auth:\n  htpasswd:\n    realm: ${REALM}\n    path: ${dir}/htpasswd\n`;
    } else if (options.auth) {
      tokens = await TokenService.start(dir, options.auth);
      authConfig = `auth:\n  token:\n    realm: ${tokens.realm}\n    service: ${SERVICE}\n` +
        `    issuer: ${ISSUER}\n    rootcertbundle: ${tokens.certPath}\n`;
    }
    await Deno.writeTextFile(
      `${dir}/config.yml`,
      `version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${dir}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port}
  secret: krunbox-test-secret
${authConfig}`,
    );
    const process = new Deno.Command("sh", {
      args: ["-c", `exec docker-registry serve "$1" >"$2" 2>&1`, "sh", `${dir}/config.yml`, `${dir}/registry.log`],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const registry = new LocalRegistry(dir, `127.0.0.1:${port}`, process, options.auth, tokens);
    let exited = false;
    process.status.then(() => exited = true);
    for (let i = 0; i < 300 && !exited; i++) {
      try {
        const res = await fetch(`${registry.url}/v2/`);
        await res.body?.cancel();
        if (res.status === 200 || res.status === 401) return registry;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    const log = await registry.log();
    await registry[Symbol.asyncDispose]();
    throw new Error(`docker-registry did not come up on ${registry.host}; its log:\n${log}`);
  }

  /** The registry's log so far. */
  async log(): Promise<string> {
    return await Deno.readTextFile(`${this.dir}/registry.log`).catch(() => "");
  }

  /** An Authorization header with push+pull rights on `repo`, or undefined without auth. */
  async authorization(repo: string): Promise<string | undefined> {
    if (!this.auth) return undefined;
    const basic = `Basic ${btoa(`${this.auth.username}:${this.auth.password}`)}`;
    if (!this.tokens) return basic;
    const url = `${this.tokens.realm}?service=${SERVICE}&scope=repository:${repo}:pull,push`;
    const res = await fetch(url, { headers: { authorization: basic } });
    const { token } = await res.json();
    return `Bearer ${token}`;
  }

  /** PUTs a manifest or index document; returns the registry's `Docker-Content-Digest`. */
  async putManifest(repo: string, reference: string, body: string, mediaType: string): Promise<string> {
    const headers = new Headers({ "content-type": mediaType });
    const authz = await this.authorization(repo);
    if (authz) headers.set("authorization", authz);
    const res = await fetch(`${this.url}/v2/${repo}/manifests/${reference}`, { method: "PUT", headers, body });
    const text = await res.text();
    if (res.status !== 201) throw new Error(`PUT manifest ${repo}:${reference}: HTTP ${res.status} ${text}`);
    return res.headers.get("docker-content-digest")!;
  }

  /** Stops the registry (and token service) and removes its storage. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.process.kill("SIGTERM");
    } catch {
      // already gone
    }
    const timer = setTimeout(() => {
      try {
        this.process.kill("SIGKILL");
      } catch {
        // gone
      }
    }, 3000);
    await this.process.status;
    clearTimeout(timer);
    await this.tokens?.stop();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** Image config and push options of {@link pushImage}. */
export interface PushOptions {
  /** `KEY=value` environment entries. */
  env?: string[];
  /** Entrypoint argv. */
  entrypoint?: string[];
  /** Cmd argv. */
  cmd?: string[];
  /** Working directory. */
  workdir?: string;
  /** User. */
  user?: string;
  /** Architecture written to the config (default: umoci's, amd64 here). */
  architecture?: string;
  /** Credentials for the push. */
  creds?: RegistryUser;
}

/**
 * Builds an OCI image with umoci — one layer per directory in `rootfsDirs`,
 * lowest first — and pushes it to `host` as `nameTag` (`repo:tag`) with
 * skopeo. Returns the pushed manifest's digest.
 */
export async function pushImage(
  host: string,
  nameTag: string,
  layers: (string | ((rootfs: string) => Promise<void>))[],
  options: PushOptions = {},
): Promise<{ digest: string }> {
  const colon = nameTag.lastIndexOf(":");
  if (colon < 0) throw new Error(`pushImage: "${nameTag}" has no tag`);
  const tag = nameTag.slice(colon + 1);
  const work = await Deno.makeTempDir({ prefix: "krunbox-push-" });
  try {
    const layout = `${work}/layout`;
    const image = `${layout}:${tag}`;
    const bundle = `${work}/bundle`;
    await run("umoci", ["init", "--layout", layout]);
    await run("umoci", ["new", "--image", image]);
    // A layer is a directory copied over the root, or an edit of the root
    // (deletions become whiteouts in the repacked layer).
    for (const layer of layers) {
      await run("umoci", ["unpack", "--image", image, bundle]);
      if (typeof layer === "string") await run("cp", ["-a", `${layer}/.`, `${bundle}/rootfs/`]);
      else await layer(`${bundle}/rootfs`);
      await run("umoci", ["repack", "--image", image, bundle]);
      await Deno.remove(bundle, { recursive: true });
    }
    const config: string[] = [];
    for (const e of options.env ?? []) config.push("--config.env", e);
    for (const e of options.entrypoint ?? []) config.push("--config.entrypoint", e);
    for (const c of options.cmd ?? []) config.push("--config.cmd", c);
    if (options.workdir) config.push("--config.workingdir", options.workdir);
    if (options.user) config.push("--config.user", options.user);
    if (options.architecture) config.push("--architecture", options.architecture);
    if (config.length) await run("umoci", ["config", "--image", image, ...config]);
    const creds = options.creds ? ["--dest-creds", `${options.creds.username}:${options.creds.password}`] : [];
    await run("skopeo", [
      "--insecure-policy",
      "copy",
      "--quiet",
      "--dest-tls-verify=false",
      ...creds,
      "--digestfile",
      `${work}/digest`,
      `oci:${image}`,
      `docker://${host}/${nameTag}`,
    ]);
    return { digest: (await Deno.readTextFile(`${work}/digest`)).trim() };
  } finally {
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

/** A layer for {@link pushLayers}: a tar, gzipped unless told otherwise (zstd needs the `zstd` CLI). */
export type RawLayer = Uint8Array | { tar: Uint8Array; compression?: "gzip" | "zstd" | "none" };

async function compress(tar: Uint8Array, how: "gzip" | "zstd" | "none"): Promise<Uint8Array> {
  if (how === "none") return tar;
  if (how === "zstd") {
    const z = await zstdCompress(tar);
    if (!z) throw new Error("zstd failed (apt-get install zstd)");
    return z;
  }
  return new Uint8Array(
    await new Response(new Blob([tar as Uint8Array<ArrayBuffer>]).stream().pipeThrough(new CompressionStream("gzip")))
      .arrayBuffer(),
  );
}

const LAYER_TYPES = {
  gzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  zstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  none: "application/vnd.oci.image.layer.v1.tar",
} as const;

/**
 * Pushes an image made of raw tar layers (lowest first) straight through
 * the registry API, so tests can publish archives umoci would never write:
 * hostile names, repeated blobs, plain (uncompressed) and zstd layers. Returns the
 * manifest digest and each layer's blob digest.
 *
 * @example
 * ```ts
 * import { LocalRegistry, pushLayers } from "./registry.ts";
 * import { writeTar } from "./tar_writer.ts";
 * await using reg = await LocalRegistry.start();
 * await pushLayers(reg, "raw/one:1", [writeTar([{ name: "hello", data: "hi" }])]);
 * ```
 */
export async function pushLayers(
  reg: LocalRegistry,
  nameTag: string,
  layers: readonly RawLayer[],
): Promise<{ digest: string; blobs: string[] }> {
  const [repo, tag] = nameTag.split(":");
  const upload = async (bytes: Uint8Array) => {
    const start = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: "POST" });
    await start.body?.cancel();
    const location = new URL(start.headers.get("location")!, reg.url);
    location.searchParams.set("digest", digestOf(bytes));
    const put = await fetch(location, { method: "PUT", body: bytes as Uint8Array<ArrayBuffer> });
    await put.body?.cancel();
    if (put.status !== 201) throw new Error(`blob upload to ${repo}: HTTP ${put.status}`);
  };
  const descriptors = [];
  const diffIds = [];
  for (const layer of layers) {
    const { tar, compression = "gzip" } = layer instanceof Uint8Array ? { tar: layer } : layer;
    const blob = await compress(tar, compression);
    await upload(blob);
    diffIds.push(digestOf(tar));
    descriptors.push({ mediaType: LAYER_TYPES[compression], digest: digestOf(blob), size: blob.length });
  }
  const config = new TextEncoder().encode(JSON.stringify({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: diffIds },
    config: {},
  }));
  await upload(config);
  const digest = await reg.putManifest(
    repo,
    tag,
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: digestOf(config), size: config.length },
      layers: descriptors,
    }),
    "application/vnd.oci.image.manifest.v1+json",
  );
  return { digest, blobs: descriptors.map((d) => d.digest) };
}
