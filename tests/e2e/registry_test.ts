/**
 * The registry client against a real docker-registry (distribution 2.8) on
 * 127.0.0.1 — no auth, htpasswd (Basic) auth, token (Bearer) auth — with
 * images built by umoci from tiny directories and pushed by skopeo; plus a
 * scripted fake registry for the failures a real one never produces.
 */

import { createHash, randomBytes } from "node:crypto";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { ImageError } from "../../src/errors.ts";
import { parseReference } from "../../src/image/reference.ts";
import type { BasicAuth } from "../../src/image/auth.ts";
import { digestOf, digestStream } from "../../src/image/digest.ts";
import { MediaType } from "../../src/image/oci.ts";
import { RegistryClient } from "../../src/image/registry.ts";
import { LocalRegistry, missingRegistryTools, pushImage, type RegistryUser } from "../util/registry.ts";
import { need } from "../util/require.ts";
import { which } from "../../src/util/command.ts";

const skipAll = need("registry", await missingRegistryTools(), "registry tests");
const skipBasic = skipAll ??
  (await which("htpasswd") ? undefined : "htpasswd missing (apt-get install -y apache2-utils)");
if (skipBasic && !skipAll) console.log(`SKIPPING htpasswd registry test: ${skipBasic}`);
const skipToken = skipAll ?? (await which("openssl") ? undefined : "openssl missing (apt-get install -y openssl)");
if (skipToken && !skipAll) console.log(`SKIPPING token registry test: ${skipToken}`);

const USER: RegistryUser = { username: "krun", password: "s3cret:with-colon" };
const GOOD: BasicAuth = { kind: "basic", ...USER };
const WRONG: BasicAuth = { kind: "basic", username: "krun", password: "nope" };

/** Two tiny rootfs layers: some text files, a script, 200 KiB of random data. */
async function makeLayers(): Promise<{ dirs: string[]; cleanup(): Promise<void> }> {
  const root = await Deno.makeTempDir({ prefix: "krunbox-layers-" });
  const l1 = `${root}/l1`;
  const l2 = `${root}/l2`;
  await Deno.mkdir(`${l1}/etc`, { recursive: true });
  await Deno.mkdir(`${l1}/bin`, { recursive: true });
  await Deno.writeTextFile(`${l1}/etc/hostname`, "krunbox-test\n");
  await Deno.writeTextFile(`${l1}/bin/hello`, "#!/bin/sh\necho hello\n", { mode: 0o755 });
  await Deno.mkdir(`${l2}/data`, { recursive: true });
  await Deno.writeFile(`${l2}/data/random.bin`, new Uint8Array(randomBytes(200 * 1024)));
  await Deno.writeTextFile(`${l2}/etc-motd`, "layer two\n");
  return { dirs: [l1, l2], cleanup: () => Deno.remove(root, { recursive: true }) };
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

function tarHasFile(tar: Uint8Array, name: string): boolean {
  for (let off = 0; off + 512 <= tar.length;) {
    const header = tar.subarray(off, off + 512);
    if (header.every((b) => b === 0)) return false;
    const path = new TextDecoder().decode(header.subarray(0, 100)).replace(/\0.*$/s, "");
    if (path.replace(/^\.\//, "") === name) return true;
    const size = parseInt(new TextDecoder().decode(header.subarray(124, 136)).replace(/\0.*$/s, "").trim() || "0", 8);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  return false;
}

Deno.test({
  name: "registry without auth: resolve, blobs, ranges, index, errors",
  ignore: skipAll !== undefined,
  async fn(t) {
    await using reg = await LocalRegistry.start();
    const layers = await makeLayers();
    try {
      const { digest } = await pushImage(reg.host, "test/app:v1", layers.dirs, {
        env: ["A=1", "PATH=/bin"],
        entrypoint: ["/bin/hello", "--loud"],
        workdir: "/data",
      });
      const client = (s: string) => new RegistryClient(parseReference(s));

      await t.step("resolve by tag returns the pushed manifest and its config", async () => {
        const image = await client(`${reg.host}/test/app:v1`).resolve();
        assertEquals(image.manifestDigest, digest);
        assertEquals(image.indexDigest, undefined);
        assertEquals(image.manifest.mediaType, MediaType.OCI_MANIFEST);
        assertEquals(image.manifest.layers.length, 2);
        assertEquals(image.manifest.config.mediaType, MediaType.OCI_CONFIG);
        assertEquals(image.config.architecture, "amd64");
        assertEquals(image.config.os, "linux");
        assertEquals(image.config.config?.Env, ["A=1", "PATH=/bin"]);
        assertEquals(image.config.config?.Entrypoint, ["/bin/hello", "--loud"]);
        assertEquals(image.config.config?.WorkingDir, "/data");
        assertEquals(image.config.rootfs?.diff_ids.length, 2);
      });

      await t.step("resolve by digest (and by tag+digest) returns the same", async () => {
        const byDigest = await client(`${reg.host}/test/app@${digest}`).resolve();
        assertEquals(byDigest.manifestDigest, digest);
        const both = await client(`${reg.host}/test/app:whatever@${digest}`).resolve();
        assertEquals(both.manifestDigest, digest);
        assertEquals(both.config, byDigest.config);
      });

      await t.step("blobs stream, their digests match, and they gunzip to the config's diff_ids", async () => {
        const c = client(`${reg.host}/test/app:v1`);
        const { manifest, config } = await c.resolve();
        for (const [i, layer] of manifest.layers.entries()) {
          const { body, size, offset } = await c.blob(layer.digest);
          assertEquals([size, offset], [layer.size, 0]);
          const hasher = digestStream({ expected: layer.digest, expectedSize: layer.size });
          const tar = await collect(body.pipeThrough(hasher).pipeThrough(new DecompressionStream("gzip")));
          assertEquals(hasher.digest, layer.digest);
          assertEquals(hasher.bytes, layer.size);
          assertEquals(sha256(tar), config.rootfs!.diff_ids[i]);
          assert(tarHasFile(tar, i === 0 ? "etc/hostname" : "data/random.bin"), `layer ${i} lacks its file`);
        }
      });

      await t.step("a blob checked against a wrong digest or size fails with IMAGE_DIGEST_MISMATCH", async () => {
        const c = client(`${reg.host}/test/app:v1`);
        const { manifest } = await c.resolve();
        const [l0, l1] = manifest.layers;
        const wrong = await c.blob(l0.digest);
        const e = await assertRejects(
          () => wrong.body.pipeThrough(digestStream({ expected: l1.digest })).pipeTo(new WritableStream()),
          ImageError,
          "digest mismatch",
        );
        assertEquals(e.code, "IMAGE_DIGEST_MISMATCH");
        assert(e.message.includes(l1.digest) && e.message.includes(l0.digest), e.message);
        // too many bytes: fails as soon as the stream passes the expected size
        const big = await c.blob(l1.digest);
        const e2 = await assertRejects(
          () =>
            big.body.pipeThrough(digestStream({ expected: l1.digest, expectedSize: 100 })).pipeTo(new WritableStream()),
          ImageError,
          "larger than the expected 100 bytes",
        );
        assertEquals(e2.code, "IMAGE_DIGEST_MISMATCH");
        // the error reaches a consumer downstream of the decompressor, too
        const again = await c.blob(l0.digest);
        await assertRejects(
          () =>
            collect(
              again.body.pipeThrough(digestStream({ expected: l1.digest })).pipeThrough(
                new DecompressionStream("gzip"),
              ),
            ),
          ImageError,
        );
      });

      await t.step("Range resume returns the tail, and feeding the head resumes the hash", async () => {
        const c = client(`${reg.host}/test/app:v1`);
        const { manifest } = await c.resolve();
        const layer = manifest.layers[1];
        const whole = await collect((await c.blob(layer.digest)).body);
        for (const at of [1, 100, 4096, layer.size - 1]) {
          const part = await c.blob(layer.digest, { offset: at });
          assertEquals([part.offset, part.size], [at, layer.size]);
          const hasher = digestStream({ expected: layer.digest, expectedSize: layer.size });
          hasher.feed(whole.subarray(0, at));
          const tail = await collect(part.body.pipeThrough(hasher));
          assertEquals(tail, whole.subarray(at));
          assertEquals(hasher.digest, layer.digest);
        }
        const atEnd = await c.blob(layer.digest, { offset: layer.size });
        assertEquals([atEnd.offset, atEnd.size, (await collect(atEnd.body)).length], [layer.size, layer.size, 0]);
        const past = await assertRejects(() => c.blob(layer.digest, { offset: layer.size + 10 }), ImageError);
        assertEquals(past.code, "IMAGE_PULL");
      });

      await t.step("unknown tag, repository and blob → IMAGE_NOT_FOUND", async () => {
        const tag = await assertRejects(() => client(`${reg.host}/test/app:nope`).resolve(), ImageError);
        assertEquals(tag.code, "IMAGE_NOT_FOUND");
        assert(tag.message.includes("MANIFEST_UNKNOWN") && tag.message.includes("test/app:nope"), tag.message);
        const repo = await assertRejects(() => client(`${reg.host}/test/nothing:v1`).resolve(), ImageError);
        assertEquals(repo.code, "IMAGE_NOT_FOUND");
        const missing = `sha256:${"0".repeat(64)}`;
        const blob = await assertRejects(() => client(`${reg.host}/test/app:v1`).blob(missing), ImageError);
        assertEquals(blob.code, "IMAGE_NOT_FOUND");
        assert(blob.message.includes("BLOB_UNKNOWN"), blob.message);
        const manifestByDigest = await assertRejects(
          () => client(`${reg.host}/test/app@${missing}`).resolve(),
          ImageError,
        );
        assertEquals(manifestByDigest.code, "IMAGE_NOT_FOUND");
        assert(blob.cause !== undefined, "errors keep their cause");
      });

      await t.step("an OCI index resolves to the platform's manifest", async () => {
        const arm = await pushImage(reg.host, "test/app:arm", [layers.dirs[0]], {
          architecture: "arm64",
          entrypoint: ["/bin/arm"],
        });
        const manifestSize = async (d: string) => {
          const res = await fetch(`${reg.url}/v2/test/app/manifests/${d}`, {
            headers: { accept: MediaType.OCI_MANIFEST },
          });
          return (await res.arrayBuffer()).byteLength;
        };
        const index = JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.OCI_INDEX,
          manifests: [
            {
              mediaType: MediaType.OCI_MANIFEST,
              digest: arm.digest,
              size: await manifestSize(arm.digest),
              platform: { os: "linux", architecture: "arm64", variant: "v8" },
            },
            {
              mediaType: MediaType.OCI_MANIFEST,
              digest,
              size: await manifestSize(digest),
              platform: { os: "linux", architecture: "amd64", variant: "v3" },
            },
          ],
        });
        const indexDigest = await reg.putManifest("test/app", "multi", index, MediaType.OCI_INDEX);
        assertEquals(indexDigest, digestOf(new TextEncoder().encode(index)));

        const amd = await client(`${reg.host}/test/app:multi`).resolve();
        assertEquals([amd.manifestDigest, amd.indexDigest], [digest, indexDigest]);
        assertEquals(amd.config.architecture, "amd64");
        const arm64 = await client(`${reg.host}/test/app:multi`).resolve({ os: "linux", architecture: "arm64" });
        assertEquals(arm64.manifestDigest, arm.digest);
        assertEquals(arm64.config.architecture, "arm64");
        assertEquals(arm64.config.config?.Entrypoint, ["/bin/arm"]);
        const pinned = await client(`${reg.host}/test/app@${indexDigest}`).resolve({
          os: "linux",
          architecture: "arm64",
          variant: "v8",
        });
        assertEquals(pinned.manifestDigest, arm.digest);
        const none = await assertRejects(
          () => client(`${reg.host}/test/app:multi`).resolve({ os: "linux", architecture: "riscv64" }),
          ImageError,
          "available: linux/arm64/v8, linux/amd64/v3",
        );
        assertEquals(none.code, "IMAGE_NOT_FOUND");
        const wrongVariant = await assertRejects(
          () => client(`${reg.host}/test/app:multi`).resolve({ os: "linux", architecture: "arm64", variant: "v7" }),
          ImageError,
        );
        assertEquals(wrongVariant.code, "IMAGE_NOT_FOUND");

        // a Docker manifest list is handled the same way
        const list = index.replace(MediaType.OCI_INDEX, MediaType.DOCKER_LIST);
        await reg.putManifest("test/app", "list", list, MediaType.DOCKER_LIST);
        const fromList = await client(`${reg.host}/test/app:list`).resolve();
        assertEquals(fromList.manifestDigest, digest);
      });
    } finally {
      await layers.cleanup();
    }
  },
});

Deno.test({
  name: "registry with htpasswd (Basic) auth: none or wrong credentials → IMAGE_AUTH, right ones work",
  ignore: skipBasic !== undefined,
  async fn(t) {
    await using reg = await LocalRegistry.start({ auth: USER });
    const layers = await makeLayers();
    try {
      const { digest } = await pushImage(reg.host, "private/app:v1", layers.dirs, { creds: USER });
      const ref = parseReference(`${reg.host}/private/app:v1`);

      await t.step("without credentials", async () => {
        const e = await assertRejects(() => new RegistryClient(ref).resolve(), ImageError, "requires credentials");
        assertEquals(e.code, "IMAGE_AUTH");
        const b = await assertRejects(() => new RegistryClient(ref).blob(digest), ImageError);
        assertEquals(b.code, "IMAGE_AUTH");
      });

      await t.step("with wrong credentials", async () => {
        const e = await assertRejects(() => new RegistryClient(ref, { auth: WRONG }).resolve(), ImageError);
        assertEquals(e.code, "IMAGE_AUTH");
        assert(e.message.includes('user "krun"') && e.message.includes("wrong credentials"), e.message);
        assert(e.cause !== undefined, "keeps the registry's answer as cause");
      });

      await t.step("with the right credentials", async () => {
        const c = new RegistryClient(ref, { auth: GOOD });
        const image = await c.resolve();
        assertEquals(image.manifestDigest, digest);
        const layer = image.manifest.layers[0];
        const hasher = digestStream({ expected: layer.digest });
        await (await c.blob(layer.digest)).body.pipeThrough(hasher).pipeTo(new WritableStream());
        assertEquals(hasher.digest, layer.digest);
        const missing = await assertRejects(
          () => new RegistryClient(parseReference(`${reg.host}/private/app:nope`), { auth: GOOD }).resolve(),
          ImageError,
        );
        assertEquals(missing.code, "IMAGE_NOT_FOUND");
      });
    } finally {
      await layers.cleanup();
    }
  },
});

Deno.test({
  name: "registry with token (Bearer) auth: anonymous or wrong → IMAGE_AUTH, right → works with one cached token",
  ignore: skipToken !== undefined,
  async fn(t) {
    await using reg = await LocalRegistry.start({ auth: { ...USER, scheme: "token" } });
    const layers = await makeLayers();
    try {
      const { digest } = await pushImage(reg.host, "private/app:v1", layers.dirs, { creds: USER });
      const ref = parseReference(`${reg.host}/private/app:v1`);
      const tokens = reg.tokens!;

      await t.step("anonymous: the token has no access and the registry still says 401", async () => {
        const before = tokens.requests.length;
        const e = await assertRejects(() => new RegistryClient(ref).resolve(), ImageError, "anonymous");
        assertEquals(e.code, "IMAGE_AUTH");
        assertEquals(tokens.requests.slice(before).map((r) => [r.user, r.scope]), [
          [undefined, ["repository:private/app:pull"]],
        ]);
      });

      await t.step("wrong credentials: the token service refuses them", async () => {
        const e = await assertRejects(() => new RegistryClient(ref, { auth: WRONG }).resolve(), ImageError);
        assertEquals(e.code, "IMAGE_AUTH");
        assert(e.message.includes("token service") && e.message.includes("incorrect username or password"), e.message);
      });

      await t.step("right credentials: resolve and blobs share one token", async () => {
        const before = tokens.requests.length;
        const c = new RegistryClient(ref, { auth: GOOD });
        const image = await c.resolve();
        assertEquals(image.manifestDigest, digest);
        for (const layer of image.manifest.layers) {
          const hasher = digestStream({ expected: layer.digest });
          await (await c.blob(layer.digest)).body.pipeThrough(hasher).pipeTo(new WritableStream());
        }
        const part = await c.blob(image.manifest.layers[1].digest, { offset: 10 });
        assertEquals(part.offset, 10);
        await part.body.cancel();
        assertEquals(tokens.requests.slice(before).map((r) => [r.user, r.ok]), [["krun", true]]);
      });
    } finally {
      await layers.cleanup();
    }
  },
});

/** A scripted registry: each path answers as the handler says. */
async function withFakeRegistry(
  handler: (req: Request, url: URL) => Response | Promise<Response>,
  fn: (host: string) => Promise<void>,
): Promise<void> {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => handler(req, new URL(req.url)));
  try {
    await fn(`127.0.0.1:${server.addr.port}`);
  } finally {
    await server.shutdown();
  }
}

Deno.test("fake registry: digest mismatches, registry errors and redirects are reported precisely", async (t) => {
  const enc = new TextEncoder();
  const config = enc.encode(JSON.stringify({ architecture: "amd64", os: "linux", config: {} }));
  const configDigest = digestOf(config);
  const manifest = enc.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaType.OCI_MANIFEST,
    config: { mediaType: MediaType.OCI_CONFIG, digest: configDigest, size: config.length },
    layers: [],
  }));
  const manifestDigest = digestOf(manifest);
  const other = `sha256:${"1".repeat(64)}`;
  const seen: { path: string; authorization: string | null }[] = [];
  let tokenRequests = 0;

  await withFakeRegistry((req, url) => {
    seen.push({ path: url.pathname, authorization: req.headers.get("authorization") });
    const p = url.pathname;
    const ok = (body: Uint8Array<ArrayBuffer>, headers: Record<string, string> = {}) =>
      new Response(body, { headers: { "content-type": MediaType.OCI_MANIFEST, ...headers } });
    if (p === "/v2/x/lying-header/manifests/v1") return ok(manifest, { "docker-content-digest": other });
    if (p === "/v2/x/good/manifests/v1") return ok(manifest, { "docker-content-digest": manifestDigest });
    if (p === `/v2/x/good/manifests/${other}`) return ok(manifest);
    if (p === "/v2/x/no-header/manifests/v1") return ok(manifest);
    if (p === "/v2/x/bad-config/manifests/v1") return ok(manifest);
    if (p === `/v2/x/bad-config/blobs/${configDigest}`) return new Response(enc.encode('{"architecture":"arm"}'));
    if (p === "/token") {
      tokenRequests++;
      return new Promise<Response>((r) => setTimeout(() => r(Response.json({ token: "t0k3n", expires_in: 300 })), 50));
    }
    if (p.startsWith("/v2/x/token/") && req.headers.get("authorization") !== "Bearer t0k3n") {
      return new Response(null, {
        status: 401,
        headers: {
          "www-authenticate":
            `Bearer realm="http://127.0.0.1:${url.port}/token",service="fake",scope="repository:x/token:pull"`,
        },
      });
    }
    if (
      p.startsWith("/v2/x/redirect/") && req.headers.get("authorization") !== `Basic ${btoa("krun:s3cret:with-colon")}`
    ) {
      return new Response("login first", { status: 401, headers: { "www-authenticate": 'Basic realm="fake"' } });
    }
    if (p === "/v2/x/redirect/manifests/v1") return ok(manifest);
    if (p === `/v2/x/redirect/blobs/${configDigest}`) {
      // to another origin (localhost ≠ 127.0.0.1): the Authorization header must not follow
      return Response.redirect(`http://localhost:${url.port}/storage/config`, 307);
    }
    if (p === "/storage/config") return new Response(config);
    if (p === `/v2/x/norange/blobs/${configDigest}`) return new Response(config); // ignores Range
    if (p === `/v2/x/badrange/blobs/${configDigest}`) {
      return new Response(config.slice(2), {
        status: 206,
        headers: { "content-range": `bytes 2-${config.length - 1}/${config.length}` },
      });
    }
    if (p.endsWith(`/blobs/${configDigest}`)) {
      const range = /^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "");
      if (!range) return new Response(config);
      const from = Number(range[1]);
      return new Response(config.slice(from), {
        status: 206,
        headers: { "content-range": `bytes ${from}-${config.length - 1}/${config.length}` },
      });
    }
    if (p === "/v2/x/broken/manifests/v1") {
      return Response.json({ errors: [{ code: "UNKNOWN", message: "storage backend on fire" }] }, { status: 500 });
    }
    if (p === "/v2/x/limited/manifests/v1") {
      return Response.json({ errors: [{ code: "TOOMANYREQUESTS", message: "slow down" }] }, { status: 429 });
    }
    if (p === "/v2/x/schema1/manifests/v1") {
      return new Response(JSON.stringify({ schemaVersion: 1, name: "x/schema1", fsLayers: [] }), {
        headers: { "content-type": "application/vnd.docker.distribution.manifest.v1+prettyjws" },
      });
    }
    if (p === "/v2/x/garbage/manifests/v1") return ok(enc.encode("<html>not json</html>"));
    return new Response("not here", { status: 404 });
  }, async (host) => {
    const client = (repo: string, auth?: BasicAuth) => new RegistryClient(parseReference(`${host}/${repo}`), { auth });

    await t.step("a manifest that does not hash to Docker-Content-Digest", async () => {
      const e = await assertRejects(() => client("x/lying-header:v1").resolve(), ImageError, other);
      assertEquals(e.code, "IMAGE_DIGEST_MISMATCH");
      assert(e.message.includes(manifestDigest), e.message);
    });

    await t.step("a manifest that does not hash to the digest it was asked by", async () => {
      const e = await assertRejects(() => client(`x/good@${other}`).resolve(), ImageError);
      assertEquals(e.code, "IMAGE_DIGEST_MISMATCH");
    });

    await t.step("without Docker-Content-Digest the digest is computed", async () => {
      assertEquals((await client("x/no-header:v1").resolve()).manifestDigest, manifestDigest);
      const good = await client("x/good:v1").resolve();
      assertEquals(good.manifestDigest, manifestDigest);
    });

    await t.step("a config blob that does not match its descriptor", async () => {
      const e = await assertRejects(() => client("x/bad-config:v1").resolve(), ImageError, "image config");
      assertEquals(e.code, "IMAGE_DIGEST_MISMATCH");
    });

    await t.step("blob redirects are followed, without credentials to another origin", async () => {
      seen.length = 0;
      const image = await client("x/redirect:v1", GOOD).resolve();
      assertEquals(image.config.architecture, "amd64");
      const [blob, storage] = seen.slice(-2);
      assertEquals([blob.path, storage.path], [`/v2/x/redirect/blobs/${configDigest}`, "/storage/config"]);
      assert(blob.authorization?.startsWith("Basic "), "the registry itself gets the credentials");
      assertEquals(storage.authorization, null);
    });

    await t.step(
      "a registry that ignores Range sends the whole blob: offset 0 tells the caller to restart",
      async () => {
        const whole = await client("x/norange:v1").blob(configDigest, { offset: 5 });
        assertEquals([whole.offset, whole.size], [0, config.length]);
        assertEquals(await collect(whole.body), config);
        const tail = await client("x/other:v1").blob(configDigest, { offset: 5 });
        assertEquals([tail.offset, tail.size], [5, config.length]);
        assertEquals(await collect(tail.body), config.slice(5));
        const wrong = await assertRejects(
          () => client("x/badrange:v1").blob(configDigest, { offset: 5 }),
          ImageError,
          "asked for bytes from 5",
        );
        assertEquals(wrong.code, "IMAGE_PULL");
        const bad = await assertRejects(() => client("x/other:v1").blob("sha256:../../etc"), ImageError);
        assertEquals(bad.code, "IMAGE_INVALID");
      },
    );

    await t.step("parallel requests share one token", async () => {
      const c = client("x/token:v1", GOOD);
      const results = await Promise.all([1, 2, 3, 4].map((o) => c.blob(configDigest, { offset: o })));
      for (const r of results) await r.body.cancel();
      assertEquals(tokenRequests, 1);
    });

    await t.step("server errors → IMAGE_PULL with status and the registry's message", async () => {
      const e = await assertRejects(() => client("x/broken:v1").resolve(), ImageError);
      assertEquals(e.code, "IMAGE_PULL");
      assert(e.message.includes("HTTP 500") && e.message.includes("storage backend on fire"), e.message);
      const r = await assertRejects(() => client("x/limited:v1").resolve(), ImageError, "TOOMANYREQUESTS: slow down");
      assertEquals(r.code, "IMAGE_PULL");
    });

    await t.step("schema 1 and non-JSON manifests → IMAGE_INVALID", async () => {
      const s1 = await assertRejects(() => client("x/schema1:v1").resolve(), ImageError, "schema 1");
      assertEquals(s1.code, "IMAGE_INVALID");
      const g = await assertRejects(() => client("x/garbage:v1").resolve(), ImageError, "not JSON");
      assertEquals(g.code, "IMAGE_INVALID");
    });
  });

  await t.step("an unreachable registry → IMAGE_PULL with the cause", async () => {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    const e = await assertRejects(
      () => new RegistryClient(parseReference(`127.0.0.1:${port}/a:b`)).resolve(),
      ImageError,
    );
    assertEquals(e.code, "IMAGE_PULL");
    assert(e.message.includes("cannot reach") && e.cause !== undefined, e.message);
  });

  await t.step("an aborted signal rejects with its reason", async () => {
    const controller = new AbortController();
    controller.abort(new Error("stop now"));
    const c = new RegistryClient(parseReference("127.0.0.1:1/a:b"), { signal: controller.signal });
    await assertRejects(() => c.resolve(), Error, "stop now");
  });
});
