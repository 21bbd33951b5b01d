/**
 * OCI images end to end: a real docker-registry on 127.0.0.1, images built
 * with umoci from Debian's busybox-static, pulled into the store, booted as
 * an EROFS lower + ext4 upper, and every failure typed with the store left
 * consistent.
 */

import { join } from "node:path";
import { leftovers, skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { LocalRegistry, missingRegistryTools, pushImage, pushLayers } from "../util/registry.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { need } from "../util/require.ts";
import { ImageError, Images, type PullEvent, Sandbox } from "../../mod.ts";
import { type TarSpec, writeTar } from "../util/tar_writer.ts";

const missingTools = need("registry", await missingRegistryTools(), "image tests");
const ignore = skipVmReason !== undefined || missingTools !== undefined;

let registry: LocalRegistry | undefined;
let ref = "";

/** The registry and a two-layer image: busybox, then a layer that deletes, replaces and adds files. */
async function image(): Promise<string> {
  if (ref) return ref;
  registry = await LocalRegistry.start();
  const root = await busyboxRoot();
  await pushImage(registry.host, "test/busybox:1", [
    root,
    async (rootfs) => {
      await Deno.writeTextFile(`${rootfs}/etc/lower-only`, "from layer 1\n");
      await Deno.writeTextFile(`${rootfs}/etc/replaced`, "old\n");
      await Deno.mkdir(`${rootfs}/opt/data`, { recursive: true });
      await Deno.writeTextFile(`${rootfs}/opt/data/a`, "a\n");
    },
    async (rootfs) => {
      await Deno.remove(`${rootfs}/etc/lower-only`);
      await Deno.writeTextFile(`${rootfs}/etc/replaced`, "new\n");
      await Deno.writeTextFile(`${rootfs}/etc/added`, "added\n");
      await Deno.remove(`${rootfs}/opt/data`, { recursive: true });
      await Deno.mkdir(`${rootfs}/opt/data`);
      await Deno.writeTextFile(`${rootfs}/opt/data/b`, "b\n");
    },
  ], { env: ["FROM_IMAGE=yes", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"], workdir: "/opt", cmd: ["sh"] });
  ref = `${registry.host}/test/busybox:1`;
  return ref;
}

Deno.test.afterAll(async () => {
  await registry?.[Symbol.asyncDispose]();
});

async function du(path: string): Promise<number> {
  const out = await new Deno.Command("du", { args: ["-s", "-B1", path] }).output();
  return Number(new TextDecoder().decode(out.stdout).split(/\s/)[0]);
}

Deno.test({ name: "a sandbox boots from a pulled image and sees exactly the merged filesystem", ignore }, async () => {
  const events: PullEvent[] = [];
  const sb = await Sandbox.builder("img-1").image(await image()).memory(256).onPullProgress((e) => events.push(e))
    .create();
  try {
    const phases = events.map((e) => e.phase);
    for (const p of ["resolving", "resolved", "layer", "unpacking", "building", "done"]) {
      assert(phases.includes(p as never), p);
    }
    const out = await sb.shell(
      "cat /etc/replaced /etc/added; ls /opt/data; test -e /etc/lower-only || echo gone; echo $FROM_IMAGE; pwd",
    );
    assertEquals(out.stdout, "new\nadded\nb\ngone\nyes\n/opt\n");
    // The root is an overlay of the read-only EROFS lower and the ext4 upper.
    const mounts = (await sb.exec("cat", ["/proc/mounts"])).stdout;
    assert(/^overlay \/ overlay/m.test(mounts), mounts);
    await sb.fs().write("/root/kept.txt", "upper");
    await sb.stopAndWait();
    const again = await Sandbox.start("img-1");
    assertEquals(await again.fs().readText("/root/kept.txt"), "upper");
    await again.stopAndWait();
  } finally {
    await sb[Symbol.asyncDispose]();
  }
  await Sandbox.remove("img-1");
});

Deno.test({ name: "a second sandbox of the same image adds no copy of it", ignore }, async () => {
  const cache = join(testHome, "cache", "images");
  const a = await Sandbox.builder("img-a").image(await image()).memory(256).create();
  const imagesBefore = await du(cache);
  const t0 = performance.now();
  const b = await Sandbox.builder("img-b").image(await image()).memory(256).create();
  const createMs = performance.now() - t0;
  assertEquals(await du(cache), imagesBefore, "no new image data");
  const sandboxDisk = await du(join(testHome, "sandboxes", "img-b"));
  assert(sandboxDisk < 4 << 20, `the second sandbox uses ${sandboxDisk} bytes on disk`);
  console.log(
    `second sandbox: ${(sandboxDisk / 1048576).toFixed(1)} MiB on disk, create+boot ${createMs.toFixed(0)} ms`,
  );
  await a.stopAndWait();
  await b.stopAndWait();
  await Sandbox.remove("img-a");
  await Sandbox.remove("img-b");
  assertEquals(await leftovers("img-b"), []);
});

Deno.test({ name: "pull failures are typed and leave the store consistent", ignore }, async () => {
  const r = await image();
  const host = registry!.host;
  const before = (await Images.list()).map((i) => i.reference);
  const notFound = await assertRejects(() => Images.pull(`${host}/test/busybox:nope`), ImageError);
  assertEquals(notFound.code, "IMAGE_NOT_FOUND");
  const bad = await assertRejects(() => Images.pull("UPPER/case"), ImageError);
  assertEquals(bad.code, "IMAGE_INVALID");
  await assertRejects(() => Sandbox.builder("img-x").image(`${host}/test/busybox:nope`).create(), ImageError);
  await assertRejects(() => Sandbox.get("img-x"), Error);
  const never = await assertRejects(
    () => Sandbox.builder("img-y").image(`${host}/other/image:1`).pullPolicy("never").create(),
    ImageError,
  );
  assertEquals(never.code, "IMAGE_NOT_FOUND");
  assertEquals((await Images.list()).map((i) => i.reference), before);
  void r;
});

Deno.test({ name: "a blob served with a wrong digest is refused and nothing half-built remains", ignore }, async () => {
  const reg = await LocalRegistry.start();
  try {
    const dir = await Deno.makeTempDir();
    // Incompressible, so the layer blob is far larger than the manifest and config.
    await Deno.writeFile(`${dir}/file`, crypto.getRandomValues(new Uint8Array(60_000)));
    await pushImage(reg.host, "evil/blob:1", [dir]);
    // Corrupt every layer blob in the registry's storage, keeping sizes.
    for await (const e of walk(`${reg.dir}/data`)) {
      if (!e.endsWith("/data")) continue;
      const bytes = await Deno.readFile(e);
      if (bytes.length < 1000) continue; // manifests and configs stay intact
      bytes[bytes.length >> 1] ^= 0xff;
      await Deno.writeFile(e, bytes);
    }
    const err = await assertRejects(() => Images.pull(`${reg.host}/evil/blob:1`), ImageError);
    assertEquals(err.code, "IMAGE_DIGEST_MISMATCH");
    const images = join(testHome, "cache", "images");
    for await (const e of Deno.readDir(images)) {
      assert(!e.name.includes(".building"), `leftover ${e.name}`);
      if (e.isDirectory) assert(await Deno.stat(join(images, e.name, ".complete")).then(() => true, () => false));
    }
  } finally {
    await reg[Symbol.asyncDispose]();
  }
});

Deno.test({ name: "an authenticated registry needs the right credentials", ignore }, async () => {
  const reg = await LocalRegistry.start({ auth: { username: "alice", password: "s3cret" } });
  try {
    const dir = await Deno.makeTempDir();
    await Deno.writeTextFile(`${dir}/hello`, "hi\n");
    await pushImage(reg.host, "private/app:1", [dir], { creds: { username: "alice", password: "s3cret" } });
    const anon = await assertRejects(() => Images.pull(`${reg.host}/private/app:1`), ImageError);
    assertEquals(anon.code, "IMAGE_AUTH");
    const wrong = await assertRejects(
      () => Images.pull(`${reg.host}/private/app:1`, { auth: { kind: "basic", username: "alice", password: "no" } }),
      ImageError,
    );
    assertEquals(wrong.code, "IMAGE_AUTH");
    const ok = await Images.pull(`${reg.host}/private/app:1`, {
      auth: { kind: "basic", username: "alice", password: "s3cret" },
    });
    assert(ok.manifestDigest.startsWith("sha256:"));
  } finally {
    await reg[Symbol.asyncDispose]();
  }
});

Deno.test({ name: "images list, remove and prune", ignore }, async () => {
  const r = await image();
  await Images.pull(r);
  const listed = (await Images.list()).find((i) => i.reference === r);
  assert(listed && listed.size > 0);
  await Images.remove(r);
  assertEquals((await Images.list()).some((i) => i.reference === r), false);
  const pruned = await Images.prune();
  assert(pruned.images.includes(listed.manifestDigest), JSON.stringify(pruned));
  assert(pruned.bytesFreed > 0);
  await assertRejects(() => Images.remove(r), ImageError);
});

/** Pushes a one-layer image made of raw (gzipped) tar bytes through the registry API. */
Deno.test({
  name: "a layer with ../ entries or a symlinked parent is IMAGE_INVALID and writes nothing outside the store",
  ignore,
}, async () => {
  const reg = await LocalRegistry.start();
  const outside = join(await Deno.makeTempDir(), "escaped");
  try {
    const cases: Record<string, TarSpec[]> = {
      dotdot: [{ name: "ok.txt", data: "fine" }, { name: `../../../../../../..${outside}`, data: "pwned" }],
      symlink: [{ name: "evil", type: "symlink", linkname: outside.slice(0, outside.lastIndexOf("/")) }, {
        name: "evil/escaped",
        data: "pwned",
      }],
    };
    for (const [name, specs] of Object.entries(cases)) {
      await pushLayers(reg, `hostile/${name}:1`, [writeTar(specs)]);
      const e = await assertRejects(() => Images.pull(`${reg.host}/hostile/${name}:1`), ImageError);
      assertEquals(e.code, "IMAGE_INVALID", `${name}: ${e.message}`);
      assertEquals(await Deno.stat(outside).then(() => true, () => false), false, `${name} wrote outside`);
    }
  } finally {
    await reg[Symbol.asyncDispose]();
  }
});

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) yield* walk(p);
    else yield p;
  }
}
