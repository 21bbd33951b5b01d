/**
 * Pulls against a real docker-registry on 127.0.0.1, no VM: the streamed
 * layer pipeline (download → digest → inflate → tar → EROFS lower), read
 * back with erofs-utils' fsck.erofs. Each test pulls into its own empty
 * `KRUNBOX_HOME`.
 */

import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { LocalRegistry, missingRegistryTools, pushLayers } from "../util/registry.ts";
import { extractLower, missingFsckErofs } from "../util/erofs.ts";
import { writeTar } from "../util/tar_writer.ts";
import { ImageError } from "../../src/errors.ts";
import { type PullEvent, pullImage } from "../../src/image/pull.ts";
import { imagePaths } from "../../src/image/store.ts";
import { digestOf } from "../../src/image/digest.ts";
import { Store } from "../../src/store/db.ts";
import { lockWait } from "../../src/store/lock.ts";
import { Images } from "../../src/image/images.ts";
import { need, skipped } from "../util/require.ts";

const skip = need("registry", await missingRegistryTools(), "pull tests") ??
  need("erofs", await missingFsckErofs(), "pull tests");
const ignore = skip !== undefined;

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Deterministic, compressible bytes. */
function text(size: number, seed: number): Uint8Array {
  const words = ["layer", "krunbox", "erofs", "inflate", "digest", "tar", "\n"];
  const out = new Uint8Array(size);
  let x = seed;
  for (let i = 0; i < size;) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    const w = enc.encode(words[x % words.length] + " ");
    out.set(w.subarray(0, size - i), i);
    i += w.length;
  }
  return out;
}

/** Runs `fn` with an empty KRUNBOX_HOME and a store in it. */
async function withHome(fn: (store: Store, home: string) => Promise<void>): Promise<void> {
  const home = await Deno.makeTempDir({ prefix: "krunbox-pull-test-" });
  const saved = Deno.env.get("KRUNBOX_HOME");
  Deno.env.set("KRUNBOX_HOME", home);
  try {
    using store = Store.open(join(home, "db.sqlite"));
    await fn(store, home);
  } finally {
    if (saved === undefined) Deno.env.delete("KRUNBOX_HOME");
    else Deno.env.set("KRUNBOX_HOME", saved);
    await Deno.remove(home, { recursive: true });
  }
}

/** Every path of an extracted lower with its type and (for files) content or (for links) target. */
async function listing(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(rel ? `${dir}/${rel}` : dir)) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      const abs = `${dir}/${p}`;
      if (e.isSymlink) out[p] = `-> ${await Deno.readLink(abs)}`;
      else if (e.isFile) out[p] = dec.decode(await Deno.readFile(abs));
      else if (e.isDirectory) {
        out[p] = "dir";
        await walk(p);
      } else out[p] = "special";
    }
  };
  await walk("");
  return out;
}

async function extracted(lower: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const base = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "krunbox-pull-x-" });
  try {
    await extractLower(lower, `${base}/root`);
    await fn(`${base}/root`);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

async function leftovers(home: string): Promise<string[]> {
  const found: string[] = [];
  const paths = imagePaths(join(home, "cache"));
  for (const dir of [paths.blobs, paths.images]) {
    try {
      for await (const e of Deno.readDir(dir)) {
        if (e.name.includes(".partial") || e.name.includes(".building")) found.push(e.name);
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return found;
}

/** The registry's stored file of a blob. */
function registryBlob(reg: LocalRegistry, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return `${reg.dir}/data/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
}

const big = text(3 << 20, 7);
const base = writeTar([
  { name: "etc/", type: "dir" },
  { name: "etc/os-release", data: "ID=test\n" },
  { name: "etc/gone", data: "deleted above\n" },
  { name: "opt/", type: "dir" },
  { name: "opt/old/a", data: "a\n" },
  { name: "opt/old/b", data: "b\n" },
  { name: "usr/lib/big.bin", data: big },
  { name: "usr/lib/link", type: "hardlink", linkname: "usr/lib/big.bin" },
  { name: "bin", type: "symlink", linkname: "usr/bin" },
]);
const empty = writeTar([]);
const upper = writeTar([
  { name: "etc/.wh.gone" },
  { name: "etc/os-release", data: "ID=upper\n" },
  { name: "opt/old/", type: "dir" },
  { name: "opt/old/.wh..wh..opq" },
  { name: "opt/old/c", data: "c\n" },
]);
const plain = writeTar([{ name: "srv/plain.txt", data: "from an uncompressed layer\n" }]);

Deno.test({ name: "pull: layers (gzip, plain, a repeated blob) merge into exactly one tree", ignore }, async () => {
  await using reg = await LocalRegistry.start();
  await pushLayers(reg, "merge/img:1", [base, empty, upper, empty, { tar: plain, compression: "none" }]);
  await withHome(async (store, home) => {
    const events: PullEvent[] = [];
    const img = await pullImage(store, `${reg.host}/merge/img:1`, { onProgress: (e) => events.push(e) });
    await extracted(img.lower, async (root) => {
      const got = await listing(root);
      assertEquals(got["usr/lib/big.bin"], dec.decode(big));
      assertEquals(got["usr/lib/link"], dec.decode(big));
      delete got["usr/lib/big.bin"];
      delete got["usr/lib/link"];
      assertEquals(got, {
        "bin": "-> usr/bin",
        "etc": "dir",
        "etc/os-release": "ID=upper\n",
        "opt": "dir",
        "opt/old": "dir",
        "opt/old/c": "c\n",
        "srv": "dir",
        "srv/plain.txt": "from an uncompressed layer\n",
        "usr": "dir",
        "usr/lib": "dir",
      });
    });
    // Progress: resolving, resolved, per-layer work (the repeated blob once), building, done.
    const phases = events.map((e) => e.phase);
    assertEquals(phases.slice(0, 2), ["resolving", "resolved"]);
    assertEquals(phases.slice(-2), ["building", "done"]);
    const resolved = events[1] as Extract<PullEvent, { phase: "resolved" }>;
    assertEquals(resolved.layers, 5);
    const unpacking = events.filter((e) => e.phase === "unpacking");
    assertEquals(unpacking.length, 4, "the repeated blob is read once");
    const finals = events.filter((e) => e.phase === "layer" && e.downloadedBytes === e.totalBytes);
    assertEquals(finals.length, 4);
    assertEquals(await leftovers(home), []);
    // Pulled again: nothing is fetched.
    const again: PullEvent[] = [];
    await pullImage(store, `${reg.host}/merge/img:1`, { onProgress: (e) => again.push(e) });
    assertEquals(again.map((e) => e.phase), ["done"]);
  });
});

Deno.test(
  { name: "pull: a corrupted compressible blob is a digest mismatch, never a broken tar", ignore },
  async () => {
    await using reg = await LocalRegistry.start();
    const { blobs } = await pushLayers(reg, "corrupt/img:1", [
      writeTar([{ name: "data.txt", data: text(2 << 20, 3) }]),
    ]);
    const file = registryBlob(reg, blobs[0]);
    const bytes = await Deno.readFile(file);
    for (let i = 0; i < 64; i++) bytes[(bytes.length >> 2) + i] ^= 0xa5; // early: inflate trips long before the end
    await Deno.writeFile(file, bytes);
    await withHome(async (store, home) => {
      const e = await assertRejects(() => pullImage(store, `${reg.host}/corrupt/img:1`), ImageError);
      assertEquals(e.code, "IMAGE_DIGEST_MISMATCH", e.message);
      assertEquals(await leftovers(home), [], "no .partial to resume, no half-built image");
      assertEquals(store.listImages().length, 0);
    });
  },
);

Deno.test(
  { name: "pull: an interrupted download resumes from its .partial; a bad .partial starts over", ignore },
  async () => {
    await using reg = await LocalRegistry.start();
    const tar = writeTar([{ name: "data.txt", data: text(1 << 20, 5) }, { name: "small", data: "s\n" }]);
    const { blobs } = await pushLayers(reg, "resume/img:1", [tar]);
    const blob = await Deno.readFile(registryBlob(reg, blobs[0]));
    for (
      const [what, prefix, fine] of [
        ["half", blob.subarray(0, blob.length >> 1), true],
        ["whole", blob, true],
        ["bad", text(1000, 9), false],
        ["whole but wrong", text(blob.length, 9), false],
      ] as const
    ) {
      await withHome(async (store, home) => {
        const paths = imagePaths(join(home, "cache"));
        await Deno.mkdir(paths.blobs, { recursive: true });
        await Deno.writeFile(`${paths.blob(blobs[0])}.partial`, prefix);
        const ref = `${reg.host}/resume/img:1`;
        if (!fine) {
          const e = await assertRejects(() => pullImage(store, ref), ImageError);
          assertEquals(e.code, "IMAGE_DIGEST_MISMATCH");
          assertEquals(await leftovers(home), [], "the bad .partial is gone");
        }
        const img = await pullImage(store, ref);
        assertEquals(await Deno.readFile(paths.blob(blobs[0])), blob, `${what}: the stored blob is the registry's`);
        await extracted(img.lower, async (root) => {
          assertEquals(await Deno.readFile(`${root}/data.txt`), text(1 << 20, 5));
          assertEquals(await Deno.readTextFile(`${root}/small`), "s\n");
        });
      });
    }
  },
);

Deno.test({ name: "pull: what a killed build left is cleared by the next pull of that image", ignore }, async () => {
  await using reg = await LocalRegistry.start();
  const { digest } = await pushLayers(reg, "stale/img:1", [writeTar([{ name: "f", data: "f\n" }])]);
  await withHome(async (store, home) => {
    const image = imagePaths(join(home, "cache")).image(digest);
    await Deno.mkdir(`${image}.building-999999/rootfs`, { recursive: true });
    await Deno.writeTextFile(`${image}.building-999999/lower.erofs`, "half");
    const img = await pullImage(store, `${reg.host}/stale/img:1`);
    assertEquals(await leftovers(home), []);
    await extracted(img.lower, async (root) => assertEquals(await Deno.readTextFile(`${root}/f`), "f\n"));
  });
});

Deno.test(
  { name: "pull: a hostile layer is IMAGE_INVALID; its verified blob is kept, no image is", ignore },
  async () => {
    await using reg = await LocalRegistry.start();
    const { blobs } = await pushLayers(reg, "hostile/img:1", [
      writeTar([{ name: "pad.bin", data: text(1 << 20, 11) }, { name: "../../escape", data: "x" }]),
    ]);
    await withHome(async (store, home) => {
      const e = await assertRejects(() => pullImage(store, `${reg.host}/hostile/img:1`), ImageError);
      assertEquals(e.code, "IMAGE_INVALID");
      assert(e.message.includes(".."), e.message);
      assertEquals(await leftovers(home), []);
      assert(await Deno.stat(imagePaths(join(home, "cache")).blob(blobs[0])).then(() => true, () => false));
      assertEquals(store.listImages().length, 0);
    });
  },
);

/** Runs `fn` with the variables set, then puts them back. */
async function withEnv(vars: Record<string, string>, fn: () => Promise<void>): Promise<void> {
  const saved = Object.keys(vars).map((k) => [k, Deno.env.get(k)] as const);
  for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
  try {
    await fn();
  } finally {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  }
}

Deno.test(
  {
    name: "pull: a layer over a pull cap fails by its pinned digest, naming the cap; raised, the same image pulls",
    ignore,
  },
  async () => {
    // The digest is right (the mirror serves exactly what it pinned): the caps hold while the layer
    // streams, before any digest could say more. Positive control: the same reference with the cap raised.
    await using reg = await LocalRegistry.start();
    const xattrs = writeTar(
      Array.from({ length: 40 }, (_, i) => ({ name: `x${i}`, xattrs: { "user.flood": text(64 << 10, i) } })),
    );
    const bomb = writeTar([{ name: "zeros.bin", data: new Uint8Array(8 << 20) }]); // gzip: a few KiB
    const cases = [
      { repo: "caps/xattrs", tar: xattrs, variable: "KRUNBOX_PULL_MAX_XATTR_BYTES", over: "1048576", ok: "4194304" },
      { repo: "caps/bytes", tar: bomb, variable: "KRUNBOX_PULL_MAX_BYTES", over: "4194304", ok: "16777216" },
      { repo: "caps/entries", tar: xattrs, variable: "KRUNBOX_PULL_MAX_ENTRIES", over: "39", ok: "40" },
    ];
    for (const c of cases) {
      const { digest, blobs } = await pushLayers(reg, `${c.repo}:1`, [c.tar]);
      const pinned = `${reg.host}/${c.repo}@${digest}`;
      await withHome(async (store, home) => {
        await withEnv({ [c.variable]: c.over }, async () => {
          const e = await assertRejects(() => pullImage(store, pinned), ImageError, c.variable);
          assertEquals(e.code, "IMAGE_INVALID");
          assert(e.message.includes(`limit of ${c.over} `), e.message);
        });
        assertEquals(await leftovers(home), []);
        assertEquals(store.listImages().length, 0, "no image is stored");
        assert(await Deno.stat(imagePaths(join(home, "cache")).blob(blobs[0])).then(() => true, () => false));
        await withEnv({ [c.variable]: c.ok }, async () => {
          const img = await pullImage(store, pinned);
          assertEquals(img.manifestDigest, digest);
        });
      });
    }
  },
);

Deno.test({ name: "pull: blobs already in the store are reused by another image", ignore }, async () => {
  await using reg = await LocalRegistry.start();
  await pushLayers(reg, "share/a:1", [base]);
  await pushLayers(reg, "share/b:1", [base, upper]);
  await withHome(async (store) => {
    await pullImage(store, `${reg.host}/share/a:1`);
    const events: PullEvent[] = [];
    const img = await pullImage(store, `${reg.host}/share/b:1`, { onProgress: (e) => events.push(e) });
    const layers = events.filter((e) => e.phase === "layer") as Extract<PullEvent, { phase: "layer" }>[];
    assertEquals(layers.filter((e) => e.cached).length, 1, "the shared base layer comes from the store");
    await extracted(img.lower, async (root) => {
      assertEquals(await Deno.readTextFile(`${root}/etc/os-release`), "ID=upper\n");
      assertEquals(await Deno.readFile(`${root}/usr/lib/big.bin`), big);
    });
  });
});

Deno.test({ name: "pull: two images sharing a layer, pulled at once, store it once and intact", ignore }, async () => {
  await using reg = await LocalRegistry.start();
  const shared = writeTar([{ name: "shared.bin", data: text(2 << 20, 21) }]);
  const a = await pushLayers(reg, "race/a:1", [shared, writeTar([{ name: "a", data: "a\n" }])]);
  await pushLayers(reg, "race/b:1", [shared, writeTar([{ name: "b", data: "b\n" }])]);
  const blob = await Deno.readFile(registryBlob(reg, a.blobs[0]));
  await withHome(async (store, home) => {
    const [ia, ib] = await Promise.all([
      pullImage(store, `${reg.host}/race/a:1`),
      pullImage(store, `${reg.host}/race/b:1`),
    ]);
    assertEquals(await Deno.readFile(imagePaths(join(home, "cache")).blob(a.blobs[0])), blob);
    for (const [img, own] of [[ia, "a"], [ib, "b"]] as const) {
      await extracted(img.lower, async (root) => {
        assertEquals(await Deno.readFile(`${root}/shared.bin`), text(2 << 20, 21));
        assertEquals(await Deno.readTextFile(`${root}/${own}`), `${own}\n`);
      });
    }
  });
});

Deno.test(
  { name: "pull: a damaged stored blob is fetched again; an over-long .partial starts over", ignore },
  async () => {
    await using reg = await LocalRegistry.start();
    const { blobs } = await pushLayers(reg, "damaged/img:1", [writeTar([{ name: "d.txt", data: text(1 << 20, 8) }])]);
    const ref = `${reg.host}/damaged/img:1`;
    await withHome(async (store, home) => {
      const paths = imagePaths(join(home, "cache"));
      await pullImage(store, ref);
      const good = await Deno.readFile(paths.blob(blobs[0]));
      const bad = good.slice();
      bad[bad.length >> 1] ^= 0xff;
      await Deno.writeFile(paths.blob(blobs[0]), bad);
      await Deno.remove(paths.images, { recursive: true }); // the image must be built again from its blobs
      const img = await pullImage(store, ref);
      assertEquals(await Deno.readFile(paths.blob(blobs[0])), good, "the damaged copy was replaced");
      await extracted(img.lower, async (root) => assertEquals(await Deno.readFile(`${root}/d.txt`), text(1 << 20, 8)));
      // A .partial longer than the blob cannot be its prefix.
      await Deno.remove(paths.blob(blobs[0]));
      await Deno.writeFile(`${paths.blob(blobs[0])}.partial`, new Uint8Array(good.length + 100));
      await Deno.remove(paths.images, { recursive: true });
      await pullImage(store, ref);
      assertEquals(await Deno.readFile(paths.blob(blobs[0])), good);
      assertEquals(await leftovers(home), []);
    });
  },
);

/**
 * A registry in this process serving one image whose blobs come from
 * `serveBlob` (digest → response), for failures docker-registry never makes.
 */
async function withFakeRegistry(
  layers: { mediaType?: string; digest: string; size: number }[],
  serveBlob: (digest: string, req: Request) => Response,
  fn: (ref: string) => Promise<void>,
): Promise<void> {
  const config = enc.encode(JSON.stringify({ architecture: "amd64", os: "linux", config: {} }));
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: digestOf(config), size: config.length },
    layers: layers.map((l) => ({ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", ...l })),
  });
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/v2/") return new Response("{}");
    if (path.includes("/manifests/")) {
      return new Response(manifest, {
        headers: {
          "content-type": "application/vnd.oci.image.manifest.v1+json",
          "docker-content-digest": digestOf(enc.encode(manifest)),
        },
      });
    }
    const digest = path.slice(path.lastIndexOf("/") + 1);
    if (digest === digestOf(config)) return new Response(config);
    return serveBlob(digest, req);
  });
  await fn(`127.0.0.1:${server.addr.port}/fake/img:1`);
}

async function gz(tar: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  const cs = new CompressionStream("gzip") as unknown as TransformStream<Uint8Array, Uint8Array>;
  return new Uint8Array(await new Response(ReadableStream.from([tar]).pipeThrough(cs)).arrayBuffer());
}

Deno.test({
  name: "pull: a registry that stops sending fails the pull; a failing layer stops the others at once",
  ignore,
}, async () => {
  const good = await gz(writeTar([{ name: "f", data: text(200_000, 4) }]));
  const broken = await gz(enc.encode("not a tar archive at all".repeat(100)));
  const stalled = (bytes: Uint8Array) =>
    new Response(
      new ReadableStream({ start: (ctl) => ctl.enqueue(bytes.subarray(0, 100)) }), // then nothing, ever
      { headers: { "content-length": String(bytes.length) } },
    );
  const saved = Deno.env.get("KRUNBOX_PULL_STALL_MS");
  try {
    Deno.env.set("KRUNBOX_PULL_STALL_MS", "700");
    await withFakeRegistry([{ digest: digestOf(good), size: good.length }], () => stalled(good), async (ref) => {
      await withHome(async (store, home) => {
        const t0 = performance.now();
        const e = await assertRejects(() => pullImage(store, ref), ImageError);
        assertEquals(e.code, "IMAGE_PULL");
        assert(e.message.includes("sent nothing"), e.message);
        assert(performance.now() - t0 < 10_000);
        // The bytes that did arrive stay in a .partial: the next pull resumes from them.
        const partial = (await leftovers(home)).filter((n) => n.endsWith(".partial"));
        assertEquals(partial, [`${digestOf(good).slice("sha256:".length)}.partial`]);
      });
    });
    Deno.env.set("KRUNBOX_PULL_STALL_MS", "60000");
    const layers = [{ digest: digestOf(broken), size: broken.length }, { digest: digestOf(good), size: good.length }];
    await withFakeRegistry(
      layers,
      (d) => d === digestOf(broken) ? new Response(broken) : stalled(good),
      async (ref) => {
        await withHome(async (store) => {
          const t0 = performance.now();
          const e = await assertRejects(() => pullImage(store, ref), ImageError);
          assertEquals(e.code, "IMAGE_INVALID", e.message);
          assert(performance.now() - t0 < 10_000, "the stalled sibling was cancelled, not waited for");
        });
      },
    );
  } finally {
    if (saved === undefined) Deno.env.delete("KRUNBOX_PULL_STALL_MS");
    else Deno.env.set("KRUNBOX_PULL_STALL_MS", saved);
  }
});

Deno.test({ name: "pull: digests other than sha256 are IMAGE_INVALID, not a hang", ignore }, async () => {
  const digest = `sha512:${"ab".repeat(64)}`;
  await withFakeRegistry([{ digest, size: 10 }], () => new Response("x"), async (ref) => {
    await withHome(async (store) => {
      const e = await assertRejects(() => pullImage(store, ref), ImageError);
      assertEquals(e.code, "IMAGE_INVALID", e.message);
    });
  });
});

Deno.test({ name: "pull: tar+zstd layers (over a gzip one) are read like the others", ignore }, async () => {
  const hasZstd = await new Deno.Command("zstd", { args: ["--version"], stdout: "null", stderr: "null" }).output()
    .then((o) => o.success, () => false);
  if (skipped("zstd-cli", hasZstd ? undefined : "the zstd command is missing")) return;
  await using reg = await LocalRegistry.start();
  await pushLayers(reg, "zstd/img:1", [base, { tar: upper, compression: "zstd" }]);
  await withHome(async (store) => {
    const img = await pullImage(store, `${reg.host}/zstd/img:1`);
    await extracted(img.lower, async (root) => {
      assertEquals(await Deno.readTextFile(`${root}/etc/os-release`), "ID=upper\n");
      assertEquals(await Deno.readFile(`${root}/usr/lib/big.bin`), big);
      assertEquals(await Deno.stat(`${root}/etc/gone`).then(() => true, () => false), false);
    });
  });
});

Deno.test(
  { name: "pull: prune deletes unreferenced blobs, not lock files or a download in progress", ignore },
  async () => {
    await using reg = await LocalRegistry.start();
    const { blobs } = await pushLayers(reg, "prune/img:1", [base, upper]);
    await withHome(async (store, home) => {
      const ref = `${reg.host}/prune/img:1`;
      await pullImage(store, ref);
      const paths = imagePaths(join(home, "cache"));
      // Another process downloading a blob: its lock is held and its .partial must stay.
      const busy = `sha256:${"ab".repeat(32)}`;
      await Deno.writeFile(`${paths.blob(busy)}.partial`, new Uint8Array(10));
      using _held = await lockWait(`${paths.blob(busy)}.lock`, 1000);
      await Images.remove(ref);
      // While a pull holds the image's lock (it may not have registered the image yet), prune leaves it.
      const manifestDigest = (await pullImage(store, ref)).manifestDigest;
      await Images.remove(ref);
      {
        using _pulling = await lockWait(`${paths.image(manifestDigest)}.lock`, 1000);
        assertEquals((await Images.prune()).images, []);
      }
      const pruned = await Images.prune();
      assertEquals(pruned.images, [manifestDigest]);
      assertEquals(pruned.blobs, blobs.length, "the image's two blobs, nothing else");
      const left = [];
      for await (const e of Deno.readDir(paths.blobs)) left.push(e.name);
      assertEquals(left.filter((n) => !n.endsWith(".lock")).sort(), [`${"ab".repeat(32)}.partial`]);
    });
  },
);
