/**
 * A metrics sample of a VMM that has just ended (gone from /proc, or a
 * zombie, while its agent's connection is still open) is the caller's typed
 * error (`Sandbox` and `SandboxHandle` pass their NotRunningError with the
 * sandbox's real status), never a raw /proc error or a sample of nothing.
 */

import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import type { AgentClient } from "../../src/agent/client.ts";
import { processUsage, sampleMetrics } from "../../src/metrics/snapshot.ts";
import { NotRunningError } from "../../src/errors.ts";

/** The first read of the VMM's usage comes before any request, so no agent is reached. */
const unreached = {} as AgentClient;

/** Samples `pid`; returns the cause `gone` was given (the sample must fail with gone's error). */
async function goneCause(pid: number): Promise<unknown> {
  let cause: unknown;
  const gone = (c: unknown) => {
    cause = c;
    return Promise.resolve(new NotRunningError("job-1", "crashed", { cause: c }));
  };
  const e = await assertRejects(() => sampleMetrics(unreached, pid, 1, 256, undefined, gone), NotRunningError);
  assertEquals([e.sandbox, e.status], ["job-1", "crashed"]);
  return cause;
}

Deno.test("sampling a VMM that has exited and been reaped is the caller's NotRunningError", async () => {
  const child = new Deno.Command("true").spawn();
  await child.status; // reaped: its /proc entry is gone
  assert((await goneCause(child.pid)) instanceof Deno.errors.NotFound);
  // Positive control: a live process's usage reads.
  assert((await processUsage(Deno.pid)).rssBytes > 0);
});

Deno.test("sampling a VMM that is a zombie (its stat still reads, counting nothing) is NotRunningError too", async () => {
  // `true` runs in the background and exits; its parent execs into a sleep that never waits for it.
  await using parent = new Deno.Command("sh", { args: ["-c", "true & echo $!; exec sleep 30"], stdout: "piped" })
    .spawn();
  const reader = parent.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const zombie = Number((await reader.read()).value);
  reader.releaseLock();
  let state = "";
  for (let i = 0; i < 100 && state !== "Z"; i++) {
    await new Promise((r) => setTimeout(r, 20));
    state = (await Deno.readTextFile(`/proc/${zombie}/stat`)).split(") ")[1][0];
  }
  assertEquals(state, "Z", "the background child is a zombie");
  assert(String(await goneCause(zombie)).includes("has exited"));
  // Positive control: the live parent samples as a process.
  assert((await processUsage(parent.pid)).cpuSeconds >= 0);
  parent.kill();
  await parent.stdout.cancel().catch(() => {});
});
