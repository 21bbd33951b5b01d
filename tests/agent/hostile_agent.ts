/**
 * A hostile agent for the host-side tests: a separate process (so the
 * host's memory is measured without the attacker's) that listens on one unix
 * socket per behaviour in the directory it is given and, on each connection,
 * sends `ready` and then misbehaves:
 *
 * - `empty-flood`: 16 MB of empty frames (2 M frames, each 8 zero bytes);
 * - `garbage-flood`: 16 MB of frames whose headers are not JSON;
 * - `huge-frame`: a prefix announcing a 4 GiB frame, then silence;
 * - `window-flood`: answers `exec.start`, then pushes 256 MB of `exec.out`
 *   for it with nothing acknowledged (acks and cancels ignored); answers
 *   `ping` meanwhile;
 * - `no-exit`: answers `exec.start` and `ping`, never sends `exec.exit`;
 * - `silent`: never answers anything.
 *
 * Every frame it receives is printed on stdout as one JSON line
 * `{"mode","method","id","params"}`, so a test can check what reached the
 * wire (a `$/cancel`, say). Prints `listening` once every socket is bound.
 *
 * Run: `deno run -A tests/agent/hostile_agent.ts <dir>`.
 *
 * @module
 */

import { FrameStream, isDecodeError, type RpcMessage } from "../../src/agent/frame.ts";
import { FrameWriter } from "../../src/agent/writer.ts";

/** The behaviours, each served on `<dir>/<mode>.sock`. */
export const MODES = ["empty-flood", "garbage-flood", "huge-frame", "window-flood", "no-exit", "silent"] as const;
/** One behaviour. */
export type Mode = (typeof MODES)[number];

/** Bytes of each flood of broken frames. */
export const FLOOD_BYTES = 16_000_000;
/** Bytes of exec output the window-flood pushes. */
export const PUSH_BYTES = 256 << 20;

const ready = (pid: number): RpcMessage => ({
  jsonrpc: "2.0",
  method: "ready",
  params: {
    protocol: 1,
    agent: "hostile",
    mode: "host",
    pid,
    window: 1 << 20,
    boot: { kernelMs: 0, agentStartMs: 0, readyMs: 1 },
  },
});

async function writeAll(conn: Deno.Conn, bytes: Uint8Array) {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

function log(mode: Mode, h: RpcMessage) {
  console.log(JSON.stringify({ mode, method: h.method ?? null, id: h.id ?? null, params: h.params ?? null }));
}

/** Sends `frame` over and over, FLOOD_BYTES in all (whole frames only). */
async function flood(conn: Deno.Conn, frame: Uint8Array) {
  const per = Math.floor((1 << 20) / frame.length);
  const block = new Uint8Array(per * frame.length);
  for (let i = 0; i < per; i++) block.set(frame, i * frame.length);
  for (let left = Math.floor(FLOOD_BYTES / frame.length); left > 0; left -= per) {
    await writeAll(conn, block.subarray(0, Math.min(left, per) * frame.length));
  }
}

async function serve(mode: Mode, conn: Deno.Conn) {
  const w = new FrameWriter(conn, { maxQueuedBytes: 64 << 20 });
  await w.write(ready(Deno.pid));
  if (mode === "empty-flood") return await flood(conn, new Uint8Array(8));
  if (mode === "garbage-flood") {
    const junk = new TextEncoder().encode("{not json at all");
    const frame = new Uint8Array(8 + junk.length);
    new DataView(frame.buffer).setUint32(0, junk.length);
    frame.set(junk, 8);
    return await flood(conn, frame);
  }
  if (mode === "huge-frame") {
    const prefix = new Uint8Array(8);
    new DataView(prefix.buffer).setUint32(0, 1);
    new DataView(prefix.buffer).setUint32(4, 0xffffffff);
    await writeAll(conn, prefix);
    // Then silence, connection open: the host must end it on its own.
    for await (const _ of conn.readable) { /* discard */ }
    return;
  }
  for await (const f of conn.readable.pipeThrough(new FrameStream())) {
    if (isDecodeError(f)) continue;
    const h = f.header;
    log(mode, h);
    if (mode === "silent" || typeof h.id !== "number") continue;
    if (h.method === "ping") w.write({ jsonrpc: "2.0", id: h.id, result: { uptimeMs: 1 } }).catch(() => {});
    if (h.method === "exec.start") {
      await w.write({ jsonrpc: "2.0", id: h.id, result: { pid: 4242 } }).catch(() => {});
      if (mode === "window-flood") push(w, h.id);
    }
  }
}

async function push(w: FrameWriter, ref: number) {
  const chunk = new Uint8Array(256 << 10).fill(0x79);
  let sent = 0;
  try {
    for (; sent < PUSH_BYTES; sent += chunk.length) {
      await w.write({ jsonrpc: "2.0", method: "exec.out", params: { ref, fd: 1 } }, chunk);
    }
  } catch {
    // the host hung up
  }
  console.log(JSON.stringify({ mode: "window-flood", method: "pushed", id: ref, params: { bytes: sent } }));
}

if (import.meta.main) {
  const dir = Deno.args[0];
  const listeners = MODES.map((mode) =>
    [mode, Deno.listen({ transport: "unix", path: `${dir}/${mode}.sock` })] as const
  );
  console.log("listening");
  await Promise.all(listeners.map(async ([mode, l]) => {
    for await (const conn of l) {
      serve(mode, conn).catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch {
          // closed by the host
        }
      });
    }
  }));
}
