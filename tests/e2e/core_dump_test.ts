/**
 * No core file can hold a secret value or a guest's memory: the runner of a
 * networked sandbox, its netd and its qemu run with a hard `RLIMIT_CORE` of
 * 0, read on the host from `/proc/PID/limits`. Control: this test process's
 * own hard limit is not 0 (the runner, started from it, would otherwise
 * inherit a 0 and prove nothing).
 */

import { join } from "node:path";
import { parentPid, sandboxDir, skipVmReason } from "../util/e2e.ts";
import { assert, assertEquals } from "../util/assert.ts";
import { busyboxRoot } from "../../scripts/roots.ts";
import { Sandbox } from "../../mod.ts";
import { AgentClient } from "../../src/agent/client.ts";

const ignore = skipVmReason !== undefined;

/** The core-file limit of `pid`: [soft, hard] as /proc prints them. */
function coreLimit(pid: number | "self"): [string, string] {
  const line = Deno.readTextFileSync(`/proc/${pid}/limits`).split("\n").find((l) => l.startsWith("Max core file size"));
  assert(line, `no core line in /proc/${pid}/limits`);
  const [soft, hard] = line.slice("Max core file size".length).trim().split(/\s+/);
  return [soft, hard];
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      if (parentPid(Number(e.name)) === pid) out.push(Number(e.name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

Deno.test(
  { name: "core dumps: the runner, netd and qemu of a sandbox have a hard core limit of 0", ignore },
  async () => {
    assert(coreLimit("self")[1] !== "0", "control: this process may dump core (its hard limit is not 0)");
    await using sb = await Sandbox.builder("core-limit").image(await busyboxRoot()).memory(256).create();
    await using agent = await AgentClient.connect(join(sandboxDir(sb.name), "agent.sock"));
    const { vmmPid } = (await agent.request("runner.info", {})).result;
    const runner = parentPid(vmmPid);
    assert(Deno.readTextFileSync(`/proc/${runner}/cmdline`).includes("runner"), `${runner} is the runner`);
    const netd = childrenOf(runner).find((p) => Deno.readLinkSync(`/proc/${p}/exe`).endsWith("/netd"));
    assert(netd, `netd among the runner's children: ${childrenOf(runner)}`);
    for (const [what, pid] of [["runner", runner], ["qemu", vmmPid], ["netd", netd]] as const) {
      assertEquals(coreLimit(pid), ["0", "0"], `${what} (${pid})`);
    }
  },
);
