/**
 * The relay answers the agent's `boot.config` (agent/PROTOCOL.md, "Boot
 * config") once, before `ready`, with the backend's config; a second ask
 * and any ask after ready are refused. The guest here is a raw socket
 * speaking frames, as a hostile agent would.
 */

import { assert, assertEquals } from "../util/assert.ts";
import { encodeFrame, type Frame, FrameDecoder, isDecodeError } from "../../src/agent/frame.ts";
import { Relay } from "../../src/vmm/relay.ts";
import { closeQuietly } from "../../src/util/close.ts";

async function pair(dir: string): Promise<[Deno.Conn, Deno.Conn]> {
  const listener = Deno.listen({ transport: "unix", path: `${dir}/s.sock` });
  const [a, b] = await Promise.all([listener.accept(), Deno.connect({ transport: "unix", path: `${dir}/s.sock` })]);
  listener.close();
  return [a, b];
}

/** Reads the next frame from the raw guest end. */
async function nextFrame(conn: Deno.Conn, decoder: FrameDecoder): Promise<Frame> {
  const buf = new Uint8Array(65536);
  for (;;) {
    const f = decoder.next();
    if (f) {
      assert(!isDecodeError(f), JSON.stringify(f));
      return f;
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const n = await Promise.race([
      conn.read(buf),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error("no answer within 5 s")), 5000))),
    ]).finally(() => clearTimeout(timer));
    if (n === null) throw new Error("closed");
    decoder.push(buf.slice(0, n));
  }
}

/** A relay over a socket pair with `config`; `fn` gets the raw guest end and a way to ask. */
async function withRelay(
  config: Record<string, unknown> | undefined,
  fn: (relay: Relay, guest: Deno.Conn, ask: (id: number) => Promise<Frame["header"]>) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const [host, guest] = await pair(dir);
  const relay = new Relay(host, () => Promise.resolve({}), config);
  const decoder = new FrameDecoder();
  const ask = async (id: number) => {
    await guest.write(encodeFrame({ jsonrpc: "2.0", id, method: "boot.config", params: {} }));
    return (await nextFrame(guest, decoder)).header;
  };
  try {
    await fn(relay, guest, ask);
  } finally {
    guest.close();
    await relay.guestClosed;
    closeQuietly(host);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("boot.config is answered once before ready, refused after", async () => {
  const config = { hostname: "sb", modules: ["/lib/modules/virtio_blk.ko"], transport: { kind: "virtio-port" } };
  await withRelay(config, async (relay, guest, ask) => {
    const first = await ask(0);
    assertEquals([first.id, first.result], [0, config]);
    const second = await ask(1);
    assertEquals([second.id, second.result, typeof second.error?.code], [1, undefined, "number"]);
    await guest.write(encodeFrame({ jsonrpc: "2.0", method: "ready", params: { boot: {} } }));
    await relay.ready;
    const late = await ask(2);
    assertEquals([late.id, late.result, typeof late.error?.code], [2, undefined, "number"]);
  });
});

Deno.test("without a config to give (libkrun), boot.config is refused", async () => {
  await withRelay(undefined, async (_relay, _guest, ask) => {
    const answer = await ask(7);
    assertEquals([answer.id, answer.result, typeof answer.error?.code], [7, undefined, "number"]);
  });
});
