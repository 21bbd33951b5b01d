/**
 * A metrics sample of a VMM that has just ended (gone from /proc, or a
 * zombie, while its agent's connection is still open) is the caller's typed
 * error (`Sandbox` and `SandboxHandle` pass their NotRunningError with the
 * sandbox's real status), never a raw /proc error or a sample of nothing.
 */

import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import type { AgentClient } from "../../src/agent/client.ts";
import { processUsage, sampleMetrics } from "../../src/metrics/snapshot.ts";
import { metricsStream } from "../../src/metrics/stream.ts";
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
  // A child exits a second after its parent has exec'd into a sleep that never waits for it (a child that exits
  // before the exec may be reaped by the shell).
  await using parent = new Deno.Command("sh", { args: ["-c", "sleep 1 & echo $!; exec sleep 30"], stdout: "piped" })
    .spawn();
  const reader = parent.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const zombie = Number((await reader.read()).value);
  reader.releaseLock();
  let state = "";
  for (let i = 0; i < 500 && state !== "Z"; i++) {
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

Deno.test("metricsStream ends when a sample finds the sandbox stopped; any other failure still throws", async () => {
  const run = async (failure: Error) => {
    let n = 0;
    const seen: number[] = [];
    for await (const v of metricsStream(() => ++n < 3 ? Promise.resolve(n) : Promise.reject(failure), 1)) seen.push(v);
    return seen;
  };
  assertEquals(await run(new NotRunningError("job-1", "stopped")), [1, 2]);
  await assertRejects(() => run(new TypeError("a real bug")), TypeError);
});
