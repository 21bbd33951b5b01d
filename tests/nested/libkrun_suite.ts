/**
 * The libkrun end-to-end suite, run INSIDE the nested test host (an L1 VM
 * with a working /dev/kvm; see host.ts and tests/e2e/nested_libkrun_test.ts).
 * Not named `_test.ts`: on the outer host it must not run.
 *
 * Environment: KRUNBOX_HOME (the L1's state home, assets linked in),
 * KRUNBOX_NESTED_IMAGE (an OCI reference on the outer host's registry),
 * CI (passed on from the outer run: then nothing here may skip).
 */

import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { Images, Sandbox } from "../../mod.ts";
import { chooseBackend, probeHost } from "../../src/vmm/detect.ts";
import { need } from "../util/require.ts";

const noImage = need(
  "nested",
  Deno.env.get("KRUNBOX_NESTED_IMAGE") ? undefined : "KRUNBOX_NESTED_IMAGE (an image on the outer registry) is not set",
  "the nested OCI test",
);

Deno.test("auto selects libkrun here, where it can work", async () => {
  const decision = chooseBackend("auto", await probeHost(), "");
  assertEquals(decision.backend, "libkrun", decision.reason);
});

Deno.test("libkrun, directory root, attached: create → exec → fs → metrics → stop", async () => {
  const root = await busyboxRoot();
  const t0 = performance.now();
  const sb = await Sandbox.builder("krun-dir").image(root).backend("libkrun").memory(256).replace().create();
  const createMs = performance.now() - t0;
  const out = await sb.shell("echo hello from $(uname -r); cat /proc/cpuinfo | grep -c ^processor");
  console.log(`create ${createMs.toFixed(0)} ms, first exec ${(performance.now() - t0 - createMs).toFixed(0)} ms`);
  assert(out.stdout.startsWith("hello from"), out.stdout + out.stderr);
  await sb.fs().write("/tmp/x", "via libkrun");
  assertEquals(await sb.fs().readText("/tmp/x"), "via libkrun");
  const m = await sb.metrics();
  assert(m.memoryBytes > 0 && m.memoryLimitBytes === 256 * 1048576, JSON.stringify(m));
  const status = await sb.stopAndWait();
  assertEquals(status.status, "stopped");
  await Sandbox.remove("krun-dir");
});

Deno.test("libkrun, detached: outlives its handle, reconnects, stops", async () => {
  const root = await busyboxRoot();
  const first = await Sandbox.builder("krun-det").image(root).backend("libkrun").memory(256).replace().createDetached();
  await first[Symbol.asyncDispose]();
  const handle = await Sandbox.get("krun-det");
  assertEquals(handle.status, "running");
  const sb = await handle.connect();
  assertEquals((await sb.exec("echo", ["again"])).stdout, "again\n");
  await sb[Symbol.asyncDispose]();
  await handle.stop();
  assertEquals((await Sandbox.get("krun-det")).status, "stopped");
  await Sandbox.remove("krun-det");
});

Deno.test({
  name: "libkrun, OCI image root (EROFS lower + ext4 upper)",
  ignore: noImage !== undefined,
}, async () => {
  const ref = Deno.env.get("KRUNBOX_NESTED_IMAGE")!;
  await Images.pull(ref, { insecure: true });
  const sb = await Sandbox.builder("krun-oci").image(ref).backend("libkrun").memory(256).replace().create();
  assertEquals((await sb.shell("cat /etc/replaced; test -e /etc/lower-only || echo gone")).stdout, "new\ngone\n");
  assert(/^overlay \/ overlay/m.test((await sb.exec("cat", ["/proc/mounts"])).stdout));
  await sb.stopAndWait();
  await Sandbox.remove("krun-oci");
});
