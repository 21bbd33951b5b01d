/**
 * The builder's image options against a real docker-registry on 127.0.0.1
 * with htpasswd auth, seen in the guest and in the registry's own log:
 * `registryAuth` through `create()` (a wrong password is IMAGE_AUTH and
 * leaves nothing behind; the password is never written to the state home),
 * `rootDiskSize` (the size the guest's `df` sees), `pullPolicy`
 * `if-missing` (no request reaches the registry), `always` (a new push under
 * the same tag is what boots), `never` with a missing image (typed, no
 * request), an image's entrypoint stored and overridden, and `krunbox run`
 * (the CLI, as a process) running the image's entrypoint.
 */

import { join } from "node:path";
import { leftovers, sandboxDir, skipVmReason, testHome } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { LocalRegistry, missingRegistryTools, pushImage } from "../util/registry.ts";
import { need } from "../util/require.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { ImageError, Images, NotFoundError, Sandbox } from "../../mod.ts";

const missingTools = need("registry", await missingRegistryTools("htpasswd"), "pull-policy tests");
const ignore = skipVmReason !== undefined || missingTools !== undefined;

const USER = { username: "alice", password: `pw-${crypto.randomUUID()}` };
const GOOD = { kind: "basic", ...USER } as const;
const WRONG = { kind: "basic", username: USER.username, password: "not-the-password" } as const;
const REPO = "private/app";
const IMAGE_ENTRYPOINT = ["/bin/sh", "-c", "cat /etc/version; exit 3"];
const ROOT_DISK_MIB = 200;

let registry: LocalRegistry | undefined;
let ref = "";
/** Manifest digest → the /etc/version it holds, for every push. */
const pushed = new Map<string, string>();

/** Pushes the busybox root plus a layer holding /etc/version, with the image's entrypoint. */
async function push(version: string): Promise<string> {
  const { digest } = await pushImage(registry!.host, `${REPO}:1`, [
    await busyboxRoot(),
    async (rootfs) => await Deno.writeTextFile(`${rootfs}/etc/version`, `${version}\n`),
  ], { entrypoint: IMAGE_ENTRYPOINT, creds: USER });
  pushed.set(digest, `${version}\n`);
  return digest;
}

async function image(): Promise<string> {
  if (ref) return ref;
  registry = await LocalRegistry.start({ auth: USER });
  await push("v1");
  ref = `${registry.host}/${REPO}:1`;
  return ref;
}

Deno.test.afterAll(async () => {
  await registry?.[Symbol.asyncDispose]();
});

/** Log lines of requests for a repository (the uri is quoted when it holds a colon). */
async function repoLines(repo: string): Promise<string[]> {
  const uri = new RegExp(`http\\.request\\.uri="?/v2/${repo}/`);
  return (await registry!.log()).split("\n").filter((l) => uri.test(l));
}

/** Requests the registry logged for a repository (each line carries its request's id). */
async function requests(repo: string): Promise<number> {
  const ids = new Set<string>();
  for (const line of await repoLines(repo)) {
    const id = /http\.request\.id=([0-9a-f-]+)/.exec(line)?.[1];
    if (id) ids.add(id);
  }
  return ids.size;
}

/** Requests whose credentials the registry accepted. */
async function authorized(repo: string): Promise<number> {
  return (await repoLines(repo)).filter((l) => l.includes('msg="authorized request"')).length;
}

/**
 * Every file of the test's state home as one string, but the shared cache and
 * assets and the guest's own disks (sparse, large, and the guest never holds
 * the credentials).
 */
async function stateHomeBytes(dir = testHome): Promise<string> {
  let all = "";
  for await (const e of Deno.readDir(dir)) {
    const path = join(dir, e.name);
    if (dir === testHome && (e.name === "cache" || e.name === "assets")) continue;
    if (e.isDirectory) all += await stateHomeBytes(path);
    else if (e.isFile && !e.name.endsWith(".ext4")) all += new TextDecoder("latin1").decode(await Deno.readFile(path));
  }
  return all;
}

async function version(sb: Sandbox): Promise<string> {
  return (await sb.exec("cat", ["/etc/version"])).stdout;
}

Deno.test(
  { name: "registryAuth through create(): wrong credentials are IMAGE_AUTH, the right ones boot", ignore },
  async () => {
    const r = await image();
    const name = "api-auth";
    const accepted = await authorized(REPO);
    for (const [what, auth] of [["a wrong password", WRONG], ["no credentials", undefined]] as const) {
      const before = await requests(REPO);
      const b = Sandbox.builder(name).image(r).memory(256);
      const e = await assertRejects(() => (auth ? b.registryAuth(auth) : b).create(), ImageError);
      assertEquals(e.code, "IMAGE_AUTH", `${what}: ${e.message}`);
      assert(await requests(REPO) > before, `${what}: the registry was asked`);
      await assertRejects(() => Sandbox.get(name), NotFoundError);
      assertEquals(await Deno.stat(sandboxDir(name)).then(() => true, () => false), false, `${what}: no directory`);
    }
    assertEquals(await authorized(REPO), accepted, "no request was let in");
    {
      await using sb = await Sandbox.builder(name).image(r).memory(256).registryAuth(GOOD).rootDiskSize(ROOT_DISK_MIB)
        .create();
      assertEquals(await version(sb), "v1\n");
      assert(await authorized(REPO) > accepted, "the registry accepted the pull's credentials");
      // rootDiskSize: the writable root the guest's df sees (the overlay reports its upper).
      const df = (await sb.exec("df", ["-k", "/"])).stdout.trim().split("\n");
      const kib = Number(df[df.length - 1].trim().split(/\s+/)[1]);
      assert(kib > ROOT_DISK_MIB * 1024 * 0.8 && kib <= ROOT_DISK_MIB * 1024, `df sees ${kib} KiB`);
      // The image's entrypoint is stored, and running it does what the image says.
      const stored = (await Sandbox.get(name)).config().entrypoint!;
      assertEquals(stored, IMAGE_ENTRYPOINT);
      const ran = await sb.exec(stored[0], stored.slice(1));
      assertEquals([ran.stdout, ran.code], ["v1\n", 3]);
      assertEquals((await stateHomeBytes()).includes(USER.password), false, "the password is not in the state home");
    }
    assertEquals(await leftovers(name), []);
    await Sandbox.remove(name);
  },
);

Deno.test(
  { name: "pullPolicy: if-missing asks no registry, always sees a new push under the tag", ignore },
  async () => {
    const r = await image();
    await Images.pull(r, { auth: GOOD }); // in the store (a no-op after the test above)
    const v2 = await push("v2");
    const before = await requests(REPO);
    {
      // No credentials: a request would fail with IMAGE_AUTH, and the log would show it.
      await using sb = await Sandbox.builder("api-ifm").image(r).memory(256).pullPolicy("if-missing")
        .entrypoint(["/bin/cat", "/etc/version"]).create();
      assertEquals(await version(sb), "v1\n", "the stored image, not the new push");
      assertEquals(await requests(REPO), before, "no request reached the registry");
      const stored = (await Sandbox.get("api-ifm")).config().entrypoint!;
      assertEquals(stored, ["/bin/cat", "/etc/version"], "the builder's entrypoint over the image's");
      assertEquals((await sb.exec(stored[0], stored.slice(1))).code, 0);
    }
    {
      await using sb = await Sandbox.builder("api-always").image(r).memory(256).pullPolicy("always")
        .registryAuth(GOOD).create();
      assertEquals(await version(sb), "v2\n");
      assert(await requests(REPO) > before, "always asked the registry (the count is live)");
    }
    assertEquals((await Images.list()).find((i) => i.reference === r)?.manifestDigest, v2);
    for (const name of ["api-ifm", "api-always"]) {
      assertEquals(await leftovers(name), []);
      await Sandbox.remove(name);
    }
  },
);

Deno.test({
  name: "pullPolicy never: a missing image is IMAGE_NOT_FOUND with no request; a stored one needs none",
  ignore,
}, async () => {
  const r = await image();
  const missing = `${registry!.host}/private/missing:1`;
  const e = await assertRejects(
    () => Sandbox.builder("api-never").image(missing).memory(256).registryAuth(GOOD).pullPolicy("never").create(),
    ImageError,
  );
  assertEquals(e.code, "IMAGE_NOT_FOUND");
  assertEquals(await requests("private/missing"), 0);
  await assertRejects(() => Sandbox.get("api-never"), NotFoundError);
  // Control: with the image stored, never resolves it from the store alone.
  await Images.pull(r, { auth: GOOD });
  const before = await requests(REPO);
  const stored = await Images.pull(r, { policy: "never" });
  assert(stored.manifestDigest.startsWith("sha256:"));
  assertEquals(await requests(REPO), before);
});

Deno.test(
  { name: "krunbox run <image> without a command runs the image's entrypoint (CLI process)", ignore },
  async () => {
    const r = await image();
    await Images.pull(r, { auth: GOOD }); // the CLI gets no credentials: the image must be in the store
    // v1 or v2, by which tests ran before: the one the store holds.
    const have = pushed.get((await Images.list()).find((i) => i.reference === r)?.manifestDigest ?? "");
    assert(have, "the stored image is one this test pushed");
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../../cli.ts", import.meta.url).pathname, "run", "--name", "api-cli", r],
      env: { KRUNBOX_HOME: testHome, KRUNBOX_BACKEND: "qemu" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals([new TextDecoder().decode(out.stdout), out.code], [have, 3], stderr);
    assertEquals(await leftovers("api-cli"), []);
    await Sandbox.remove("api-cli").catch(() => {}); // `run` without --rm may keep it
  },
);
