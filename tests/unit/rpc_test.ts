/**
 * The TypeScript vocabulary of the protocol against its other sources: the
 * error codes in agent/src/rpc.rs and the methods in agent/PROTOCOL.md.
 */

import { assert, assertEquals } from "../util/assert.ts";
import { decodeErrorCode, execWindowLimit, isMethod, METHODS, NOTIFICATIONS, RPC_ERROR } from "../../src/agent/rpc.ts";
import { MAX_ATTACHMENT } from "../../src/agent/frame.ts";

const rpcRs = await Deno.readTextFile(new URL("../../agent/src/rpc.rs", import.meta.url));
const protocol = await Deno.readTextFile(new URL("../../agent/PROTOCOL.md", import.meta.url));

Deno.test("RPC_ERROR names and values every code of agent/src/rpc.rs, and nothing else", () => {
  const rust = Object.fromEntries(
    [...rpcRs.matchAll(/pub const ([A-Z_]+): i64 = (-?\d+);/g)].map((m) => [m[1], Number(m[2])]),
  );
  assert(Object.keys(rust).length >= 9, `parsed ${Object.keys(rust).length} codes from rpc.rs`);
  assertEquals({ ...RPC_ERROR }, rust);
});

Deno.test("every agent method and notification of the table is in PROTOCOL.md", () => {
  for (const m of [...Object.keys(METHODS), ...Object.keys(NOTIFICATIONS)]) {
    if (m.startsWith("runner.")) continue; // answered by the runner, not the agent
    assert(protocol.includes(`\`${m}`) || protocol.includes(`${m} {`) || protocol.includes(`| ${m} `), m);
  }
  assert(isMethod("fs.stat") && !isMethod("toString") && !isMethod("nope"));
});

Deno.test("each method has a deadline kind; only exec.stdin has none of its own", () => {
  const kinds = Object.entries(METHODS).map(([m, spec]) => [m, spec.deadline]);
  assertEquals(kinds.filter(([, d]) => d === "exec").map(([m]) => m), ["exec.stdin"]);
  assert(kinds.every(([, d]) => ["agent", "control", "exec"].includes(d)));
});

Deno.test("decode errors map to the codes PROTOCOL.md gives them; the window limit allows one read per stream", () => {
  assertEquals(decodeErrorCode("parse_error"), -32700);
  assertEquals(decodeErrorCode("frame_too_large"), -32600);
  assertEquals(decodeErrorCode("invalid_request"), -32600);
  assertEquals(execWindowLimit(1 << 20), (1 << 20) + 2 * MAX_ATTACHMENT);
});
