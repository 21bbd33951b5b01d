/**
 * libkrun end to end, here: these machines have no hardware virtualization,
 * but an L1 VM under QEMU TCG (`-cpu max`, emulated SVM) with kvm-amd loaded
 * has a working /dev/kvm. This test boots that nested host with krunbox's
 * qemu backend, serves it an OCI image from a registry on 127.0.0.1 (the L1,
 * with the host profile, reaches it as host.krunbox.internal, 10.0.2.254),
 * and a test internet host in a network namespace (tests/util/netns.ts) for
 * the suite's network cases, runs tests/nested/libkrun_suite.ts inside it and
 * reports the suite's results here.
 *
 * It also checks the other side: on this host, a forced libkrun boot ends as
 * a typed error within seconds and leaves no process behind.
 */

import { leftovers, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { LocalRegistry, missingRegistryTools, pushImage } from "../util/registry.ts";
import { bootNestedHost, L1 } from "../nested/host.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { assetVersion } from "../../src/store/assets.ts";
import { probeHost } from "../../src/vmm/detect.ts";
import { KrunboxError, Sandbox } from "../../mod.ts";
import { netnsSkipReason, NS_HOST, NS_OTHER, TestInternet } from "../util/netns.ts";
import { buildGoProgram, UDP_ECHO_GO } from "../util/go_build.ts";
import { dirname } from "node:path";

const noLibkrun = !(await assetVersion("libkrun")) || !(await assetVersion("libkrunfw"));
const host = await probeHost();
const reason = skipVmReason ??
  (noLibkrun ? "libkrun or libkrunfw is not provisioned (see `./dev doctor`)" : undefined) ??
  await missingRegistryTools();
if (reason) console.log(`SKIPPING nested libkrun tests: ${reason}`);

Deno.test({
  name: "a forced libkrun boot without hardware virtualization fails fast, typed, leaving nothing",
  ignore: reason !== undefined || host.hardwareFlag !== undefined,
}, async () => {
  const t0 = performance.now();
  const root = await busyboxRoot();
  const err = await assertRejects(
    () => Sandbox.builder("forced-krun").image(root).backend("libkrun").create(),
    KrunboxError,
  );
  assert(["BACKEND_UNAVAILABLE", "VM_CRASHED", "BOOT_TIMEOUT"].includes(err.code), `${err.code}: ${err.message}`);
  assert(performance.now() - t0 < 30_000, "within seconds");
  assertEquals(await leftovers("forced-krun"), []);
});

Deno.test({ name: "libkrun in the nested test host: the suite passes", ignore: reason !== undefined }, async () => {
  await using registry = await LocalRegistry.start();
  const root = await busyboxRoot();
  await pushImage(registry.host, "nested/busybox:1", [root, async (rootfs) => {
    await Deno.writeTextFile(`${rootfs}/etc/lower-only`, "x\n");
    await Deno.writeTextFile(`${rootfs}/etc/replaced`, "old\n");
  }, async (rootfs) => {
    await Deno.remove(`${rootfs}/etc/lower-only`);
    await Deno.writeTextFile(`${rootfs}/etc/replaced`, "new\n");
  }]);
  const port = registry.host.split(":")[1];
  // The suite's network cases: an internet host the L2 reaches through two netds (the L1's, then ours).
  await using inet = netnsSkipReason ? undefined : await TestInternet.create({
    "allowed.test": NS_HOST,
    "other.test": NS_OTHER,
  });
  const udpecho = await buildGoProgram("udpecho", UDP_ECHO_GO);
  await using l1 = await bootNestedHost("nested-host", [{
    guestPath: "/opt/krunbox-udpecho",
    hostPath: dirname(udpecho),
  }]);
  const suite = await l1.execStream(`${L1.denoDir}/deno`, {
    args: ["test", "-A", "--no-check", "--no-lock", "tests/nested/libkrun_suite.ts"],
    cwd: L1.project,
    env: {
      KRUNBOX_HOME: L1.home,
      DENO_DIR: `${L1.home}/deno`,
      HOME: "/root",
      NO_COLOR: "1",
      KRUNBOX_NESTED_IMAGE: `10.0.2.254:${port}/nested/busybox:1`,
      KRUNBOX_NESTED_UDPECHO: "/opt/krunbox-udpecho/udpecho",
      ...(inet ? { KRUNBOX_NESTED_INET: NS_HOST, KRUNBOX_NESTED_INET_OTHER: NS_OTHER } : {}),
    },
    timeout: 15 * 60_000,
  });
  let output = "";
  const enc = new TextEncoder();
  await Promise.all([suite.stdout, suite.stderr].map(async (s) => {
    let pending = "";
    for await (const text of s.pipeThrough(new TextDecoderStream())) {
      output += text;
      const lines = (pending + text).split("\n");
      pending = lines.pop()!;
      for (const line of lines) await Deno.stdout.write(enc.encode(`  [L1] ${line}\n`));
    }
    if (pending) await Deno.stdout.write(enc.encode(`  [L1] ${pending}\n`));
  }));
  const status = await suite.exited;
  const summary = output.match(/(ok|FAILED) \| (\d+) passed.*\| (\d+) failed/);
  assert(summary, "the nested suite printed its summary");
  console.log(`nested libkrun suite: ${summary[2]} passed, ${summary[3]} failed`);
  assertEquals([status.code, summary[3]], [0, "0"]);
  assert(Number(summary[2]) >= 3);
});
