/**
 * A metrics sample of a VMM that has just ended (its /proc entry gone before
 * the agent's connection closed) is the typed NotRunningError for every
 * caller, `Sandbox.metrics()` and `SandboxHandle.metrics()` alike.
 */

import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import type { AgentClient } from "../../src/agent/client.ts";
import { processUsage, sampleMetrics } from "../../src/metrics/snapshot.ts";
import { NotRunningError } from "../../src/errors.ts";

Deno.test("sampling a VMM that has exited is NotRunningError naming the sandbox, with the /proc error as cause", async () => {
  const child = new Deno.Command("true").spawn();
  const pid = child.pid;
  await child.status; // reaped: its /proc entry is gone
  // The first read of the VMM's usage comes before any request, so no agent is reached.
  const unreached = {} as AgentClient;
  const e = await assertRejects(() => sampleMetrics("job-1", unreached, pid, 1, 256, undefined), NotRunningError);
  assertEquals(e.sandbox, "job-1");
  assert(e.cause instanceof Deno.errors.NotFound, String(e.cause));
  // Positive control: a live process's usage reads.
  assert((await processUsage(Deno.pid)).rssBytes > 0);
});
