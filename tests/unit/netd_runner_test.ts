/**
 * The runner's side of netd with the real engine (the provisioned `netd`
 * asset), no VM: it starts, says ready, answers stats, refuses a bad
 * configuration with netd's own words, and dies when told to.
 */

import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { compileNetd } from "../../src/net/engine.ts";
import { parseNetwork } from "../../src/net/policy.ts";
import { BackendUnavailableError } from "../../src/errors.ts";
import { assetVersion } from "../../src/store/assets.ts";
import { sandboxPaths } from "../../src/vmm/backend.ts";
import { NetEngine } from "../../src/vmm/netd.ts";
import { RunnerLog } from "../../src/vmm/runner_log.ts";

const ignore = !(await assetVersion("netd"));
if (ignore) console.log("SKIPPING netd runner tests: the netd asset is not provisioned (`./dev setup`)");

async function place() {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-netd-unit-" });
  const paths = sandboxPaths(dir);
  const config = compileNetd(
    { name: "unit", network: parseNetwork({ mode: "user" }), ports: [], secrets: [] },
    undefined,
    { socket: paths.netSocket, hostname: "unit" },
  );
  return { dir, paths, config };
}

Deno.test({ name: "netd: starts, listens in a 0700 directory, answers stats, exits when killed", ignore }, async () => {
  const { dir, paths, config } = await place();
  try {
    await using log = await RunnerLog.open(paths.runnerLog);
    using net = await NetEngine.start("qemu", config, paths, log);
    assert(net.running && net.version.length > 0, net.version);
    assertEquals((await Deno.stat(paths.netDir)).mode! & 0o777, 0o700);
    assert((await Deno.stat(paths.netSocket)).isSocket);
    assertEquals(await net.stats(), { rxBytes: 0, txBytes: 0, connections: 0, flows: 0, eventsDropped: 0 });
    assertEquals(net.recent(), []);
    net.kill();
    const status = await net.exited;
    assertEquals(status.signal, "SIGKILL");
    assertEquals(net.running, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({ name: "netd: a configuration it refuses fails the start with its words, typed", ignore }, async () => {
  const { dir, paths, config } = await place();
  try {
    const bad = {
      ...config,
      secrets: [{
        ...config.secrets[0],
        env: "K",
        placeholder: "p",
        value: "v",
        hosts: ["a.example"],
        patterns: [],
        inBody: false,
        inQuery: false,
      }],
    };
    await using log = await RunnerLog.open(paths.runnerLog);
    const err = await assertRejects(() => NetEngine.start("qemu", bad, paths, log), BackendUnavailableError);
    assert(/netd exited at start \(code 2\)/.test(err.message), err.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "netd: with secrets its ready line carries the sandbox CA (a PEM certificate), nothing of the value",
  ignore,
}, async () => {
  const { dir, paths, config } = await place();
  try {
    const withSecret = {
      ...config,
      secrets: [{
        env: "K",
        placeholder: "krunbox-secret-0123456789abcdef0123456789abcdef",
        value: "sk-unit-value-3c1f",
        hosts: ["a.example"],
        patterns: [],
        inBody: false,
        inQuery: false,
      }],
    };
    await using log = await RunnerLog.open(paths.runnerLog);
    using net = await NetEngine.start("qemu", withSecret, paths, log);
    assert(net.caPem?.startsWith("-----BEGIN CERTIFICATE-----"), String(net.caPem));
    assert(!net.caPem!.includes("sk-unit-value"), "the CA line holds no value");
    const text = await Deno.readTextFile(paths.runnerLog).catch(() => "");
    assert(!text.includes("sk-unit-value"), "the runner log holds no value");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // Positive control: without secrets there is no CA.
  const plain = await place();
  try {
    await using log = await RunnerLog.open(plain.paths.runnerLog);
    using net = await NetEngine.start("qemu", plain.config, plain.paths, log);
    assertEquals(net.caPem, undefined);
  } finally {
    await Deno.remove(plain.dir, { recursive: true });
  }
});
