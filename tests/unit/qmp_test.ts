/**
 * The QMP client (src/vmm/qmp.ts) against a peer that speaks qemu's wire
 * format on a real unix socket: replies match commands in order with events
 * interleaved, a flood of events nobody waits for keeps at most
 * QMP_KEPT_EVENTS of them (qemu's socket is read as it writes), a later wait
 * still sees a new event, and a closed monitor fails commands and waits with
 * the typed error. Real qemu monitors are exercised by the template and
 * snapshot e2e tests.
 */

import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { Qmp, QMP_KEPT_EVENTS } from "../../src/vmm/qmp.ts";
import { BackendUnavailableError } from "../../src/errors.ts";
import { writeAll } from "../../src/util/bytes.ts";

const enc = new TextEncoder();

/** A connected pair: the client's end and the peer's. */
async function pair(): Promise<{ client: Deno.Conn; peer: Deno.Conn; [Symbol.asyncDispose](): Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "krunbox-qmp-test-" });
  const listener = Deno.listen({ transport: "unix", path: join(dir, "qmp.sock") });
  const [client, peer] = await Promise.all([
    Deno.connect({ transport: "unix", path: join(dir, "qmp.sock") }),
    listener.accept(),
  ]);
  listener.close();
  return {
    client,
    peer,
    async [Symbol.asyncDispose]() {
      try {
        peer.close();
      } catch { /* closed by the test */ }
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** The peer's side: reads the client's commands, one JSON line each. */
async function* commands(peer: Deno.Conn): AsyncGenerator<Record<string, unknown>> {
  let buf = "";
  for await (const chunk of peer.readable.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  }
}

/** The peer greets and reads the client's `qmp_capabilities`; its commands from there on. */
async function greeted(peer: Deno.Conn): Promise<AsyncGenerator<Record<string, unknown>>> {
  await send(peer, { QMP: { version: {} } });
  const cmds = commands(peer);
  assertEquals((await cmds.next()).value, { execute: "qmp_capabilities" });
  return cmds;
}

const send = (peer: Deno.Conn, ...msgs: unknown[]) =>
  writeAll(peer, enc.encode(msgs.map((m) => JSON.stringify(m) + "\n").join("")));

Deno.test("qmp: replies match commands in order; events in between are kept for event()", async () => {
  await using p = await pair();
  const script = (async () => {
    const cmds = await greeted(p.peer);
    await send(p.peer, { event: "EARLY" }, { return: {} });
    assertEquals((await cmds.next()).value, { execute: "query-status" });
    await send(p.peer, { event: "MIGRATION", data: { status: "active" } }, { return: { status: "running" } });
    assertEquals((await cmds.next()).value, { execute: "cont", arguments: { x: 1 } });
    await send(p.peer, { error: { class: "GenericError", desc: "no" } });
  })();
  using qmp = await Qmp.open(p.client);
  assertEquals(await qmp.execute("query-status"), { status: "running" });
  await assertRejects(() => qmp.execute("cont", { x: 1 }), BackendUnavailableError, "GenericError: no");
  assertEquals((await qmp.event((e) => e.event === "MIGRATION")).data, { status: "active" });
  assertEquals(qmp.keptEvents, 1, "EARLY is still kept");
  qmp.dropEvents();
  assertEquals(qmp.keptEvents, 0);
  await script;
});

Deno.test("qmp: a flood of events nobody waits for keeps the newest QMP_KEPT_EVENTS; a later wait sees a new one", async () => {
  await using p = await pair();
  const flood = 20 * QMP_KEPT_EVENTS;
  const script = (async () => {
    const cmds = await greeted(p.peer);
    await send(p.peer, { return: {} });
    await send(p.peer, ...Array.from({ length: flood }, (_, i) => ({ event: "RTC_CHANGE", data: { i } })));
    assertEquals((await cmds.next()).value, { execute: "query-status" });
    await send(p.peer, { return: {} });
    await send(p.peer, { event: "SHUTDOWN" });
  })();
  using qmp = await Qmp.open(p.client);
  // Positive control: the events arrive (read as they come, not only while a command waits).
  const t0 = performance.now();
  while (qmp.keptEvents < QMP_KEPT_EVENTS && performance.now() - t0 < 10_000) {
    await new Promise((r) => setTimeout(r, 5));
  }
  assertEquals(qmp.keptEvents, QMP_KEPT_EVENTS, "the flood was read while no command waited");
  await qmp.execute("query-status");
  assertEquals(qmp.keptEvents, QMP_KEPT_EVENTS, "bounded");
  const last = await qmp.event((e) => e.event === "RTC_CHANGE" && (e.data as { i: number }).i === flood - 1);
  assert(last, "the newest are the ones kept");
  assertEquals(
    qmp.keptEvents,
    QMP_KEPT_EVENTS - 1,
    "the oldest went: none of the first ones is left to find",
  );
  assertEquals((await qmp.event((e) => e.event === "SHUTDOWN")).event, "SHUTDOWN");
  await script;
});

Deno.test("qmp: a monitor that closes fails the command in flight and any wait, typed", async () => {
  await using p = await pair();
  const script = (async () => {
    const cmds = await greeted(p.peer);
    await send(p.peer, { return: {} });
    await cmds.next(); // the migrate below: never answered
    p.peer.close();
  })();
  using qmp = await Qmp.open(p.client);
  const waiting = qmp.event((e) => e.event === "MIGRATION");
  await assertRejects(() => qmp.execute("migrate", { uri: "fd:3" }), BackendUnavailableError, "closed its QMP");
  await assertRejects(() => waiting, BackendUnavailableError, "closed its QMP");
  await assertRejects(() => qmp.execute("query-status"), BackendUnavailableError);
  await script;
});

Deno.test("qmp: a peer that never greets fails open() once it closes, and open() closes the connection", async () => {
  await using p = await pair();
  await send(p.peer, { not: "a greeting" }); // taken as the greeting; the capabilities reply never comes
  const opening = Qmp.open(p.client);
  p.peer.close();
  await assertRejects(() => opening, BackendUnavailableError);
});

Deno.test("qmp: commands go one at a time: the second is written only after the first one's reply", async () => {
  await using p = await pair();
  const seen: string[] = [];
  const script = (async () => {
    const cmds = await greeted(p.peer);
    await send(p.peer, { return: {} });
    const first = (await cmds.next()).value as { execute: string };
    seen.push(first.execute);
    // Nothing else arrives while the first is unanswered.
    const next = cmds.next();
    const early = await Promise.race([next.then(() => "early"), new Promise((r) => setTimeout(() => r("none"), 200))]);
    seen.push(String(early));
    await send(p.peer, { return: { n: 1 } });
    seen.push(((await next).value as { execute: string }).execute);
    await send(p.peer, { return: { n: 2 } });
  })();
  using qmp = await Qmp.open(p.client);
  const [a, b] = await Promise.all([qmp.execute("first"), qmp.execute("second")]);
  assertEquals([a, b], [{ n: 1 }, { n: 2 }]);
  await script;
  assertEquals(seen, ["first", "none", "second"]);
});

Deno.test("qmp: open() that fails on an error reply closes the connection (the peer sees its end)", async () => {
  await using p = await pair();
  const script = (async () => {
    const cmds = await greeted(p.peer);
    await send(p.peer, { error: { class: "CommandNotFound", desc: "no" } });
    // The client's end closes: the peer's read ends (bounded, so a client that keeps it open fails here, not hangs).
    const end = await Promise.race([
      cmds.next().then((r) => (r.done ? "closed" : "a line")),
      new Promise((r) => setTimeout(() => r("still open after 5 s"), 5000)),
    ]);
    assertEquals(end, "closed");
  })();
  await assertRejects(() => Qmp.open(p.client), BackendUnavailableError, "CommandNotFound");
  await script;
});

Deno.test("qmp: a line that is not a QMP message ends the monitor with its cause", async () => {
  await using p = await pair();
  await send(p.peer, { QMP: { version: {} } });
  const opening = Qmp.open(p.client);
  await writeAll(p.peer, enc.encode("not json\n"));
  const e = await opening.then(() => undefined, (e) => e);
  assert(e instanceof BackendUnavailableError, String(e));
  assert(e.cause instanceof SyntaxError, `cause ${e.cause}`);
});
