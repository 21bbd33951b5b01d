/**
 * `guest.configure` against booted qemu guests, over the runner's relay as
 * any host client: after one call the guest's hostname (kernel and
 * /etc/hostname), the env of later execs and its wall clock are what the host
 * sent; a seed is accepted and reseeds (two guests seeded differently read
 * different uuids); malformed fields are typed errors that change nothing.
 */

import { join } from "node:path";
import { sandboxDir, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { InvalidConfigError, Sandbox } from "../../mod.ts";
import { AgentClient } from "../../src/agent/client.ts";
import { configureGuest } from "../../src/agent/configure.ts";

const ignore = skipVmReason !== undefined;

/** A private, writable copy of the busybox root (so /etc/hostname can be written). */
async function privateRoot(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-configure-root-" });
  const cp = await new Deno.Command("cp", { args: ["-a", `${await busyboxRoot()}/.`, dir] }).output();
  assert(cp.success, "copy of the busybox root");
  return dir;
}

Deno.test({
  name: "guest.configure sets hostname, exec env and clock in one call; bad fields are typed and change nothing",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const root = await privateRoot();
  await using sb = await Sandbox.builder("cfg-a").image(root).memory(256).env("BOOT", "1").create();
  await using agent = await AgentClient.connect(join(sandboxDir("cfg-a"), "agent.sock"));
  // Positive control: the boot config's identity first.
  assertEquals((await sb.exec("hostname")).stdout.trim(), "cfg-a");
  assertEquals((await sb.shell("echo ${BOOT:-none} ${POOLED:-none}")).stdout.trim(), "1 none");

  const future = Date.UTC(2031, 0, 2, 3, 4, 5);
  await configureGuest(agent, {
    hostname: "handed-out",
    env: { POOLED: "yes" },
    time: future * 1e6,
    seed: crypto.getRandomValues(new Uint8Array(64)),
  });
  // The agent writes /etc/hostname after its reply, before it reads the next request: a file read right after
  // the reply (served by the agent's fs thread, not the one that wrote) already sees it. A smoke check of that
  // order (the old code, which wrote before replying, passes it too; a write moved to another thread would
  // fail it only sometimes).
  assertEquals((await sb.fs().readText("/etc/hostname")).trim(), "handed-out");
  assertEquals((await sb.exec("hostname")).stdout.trim(), "handed-out");
  assertEquals((await sb.exec("cat", ["/etc/hostname"])).stdout.trim(), "handed-out");
  assertEquals((await sb.shell("echo ${BOOT:-none} ${POOLED:-none} ${PATH:+path}")).stdout.trim(), "none yes path");
  const guestSecs = Number((await sb.exec("date", ["+%s"])).stdout.trim());
  assert(Math.abs(guestSecs - future / 1000) < 30, `guest clock ${guestSecs}, sent ${future / 1000}`);
  // `time: true` puts the host's clock back.
  await configureGuest(agent, { time: true });
  const now = Number((await sb.exec("date", ["+%s"])).stdout.trim());
  assert(Math.abs(now - Date.now() / 1000) < 30, `guest clock ${now} after time: true`);

  // Malformed fields: InvalidConfigError naming the field; nothing applied (the env of the same call included).
  for (
    const [bad, field] of [
      [{ env: { LATE: "1" }, seed: new Uint8Array(8) }, "guest.seed"],
      [{ env: { LATE: "1" }, hostname: "no spaces" }, "guest.hostname"],
      [{ env: { "A=B": "1" } }, "guest.env"],
      [{ env: { LATE: "1" }, time: -5 }, "guest.timeNs"],
    ] as const
  ) {
    const e = await assertRejects(() => configureGuest(agent, bad), InvalidConfigError);
    assertEquals(e.field, field, e.message);
  }
  assertEquals((await sb.exec("hostname")).stdout.trim(), "handed-out");
  assertEquals((await sb.shell("echo ${LATE:-unset} ${POOLED:-none}")).stdout.trim(), "unset yes");
  await Deno.remove(root, { recursive: true }).catch(() => {});
});

Deno.test({
  name: "guest.configure: two guests seeded differently read different uuids and getrandom bytes",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const root = await busyboxRoot();
  const [a, b] = await Promise.all(
    ["cfg-r1", "cfg-r2"].map((n) => Sandbox.builder(n).image(root).memory(256).create()),
  );
  await using _a = a;
  await using _b = b;
  const reads = await Promise.all([a, b].map(async (sb) => {
    await using agent = await AgentClient.connect(join(sandboxDir(sb.name), "agent.sock"));
    await configureGuest(agent, { seed: true });
    const uuid = (await sb.exec("cat", ["/proc/sys/kernel/random/uuid"])).stdout.trim();
    // dd reads /dev/urandom (the same CRNG as getrandom).
    const bytes = (await sb.shell("dd if=/dev/urandom bs=16 count=1 2>/dev/null | od -An -tx1")).stdout.trim();
    return { uuid, bytes };
  }));
  assert(/^[0-9a-f-]{36}$/.test(reads[0].uuid), reads[0].uuid);
  assert(reads[0].uuid !== reads[1].uuid, "uuids differ");
  assert(reads[0].bytes.length > 0 && reads[0].bytes !== reads[1].bytes, "random bytes differ");
});
