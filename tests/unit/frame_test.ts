import { assert, assertEquals, assertRejects } from "../util/assert.ts";
import { FrameWriter } from "../../src/agent/writer.ts";
import { ProtocolError } from "../../src/errors.ts";
import {
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameErrorCounts,
  FrameStream,
  isDecodeError,
  MAX_ATTACHMENT,
  MAX_HEADER,
} from "../../src/agent/frame.ts";

interface Vectors {
  valid: { name: string; hex: string; header: unknown; attachmentHex: string }[];
  invalid: { name: string; hex: string; error: string }[];
  stream: { hex: string; headers: unknown[]; attachmentsHex: string[] };
}

const vectors: Vectors = JSON.parse(
  await Deno.readTextFile(new URL("../../agent/vectors/frames.json", import.meta.url)),
);

const fromHex = (h: string) => new Uint8Array(h.match(/../g)?.map((b) => parseInt(b, 16)) ?? []);
const toHex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

function decodeAll(bytes: Uint8Array, chunk = bytes.length || 1) {
  const d = new FrameDecoder();
  const out: ReturnType<FrameDecoder["next"]>[] = [];
  for (let i = 0; i < bytes.length; i += chunk) {
    d.push(bytes.subarray(i, i + chunk));
    for (let f = d.next(); f; f = d.next()) out.push(f);
  }
  const end = d.finish();
  if (end) out.push(end);
  return out;
}

for (const v of vectors.valid) {
  Deno.test(`frame vector decodes: ${v.name}`, () => {
    for (const chunk of [1, 3, 1000]) {
      const [f, ...rest] = decodeAll(fromHex(v.hex), chunk);
      assertEquals(rest.length, 0);
      assert(f && !isDecodeError(f), `decodes (chunk ${chunk})`);
      assertEquals((f as Frame).header, v.header);
      assertEquals(toHex((f as Frame).attachment), v.attachmentHex);
      const again = decodeAll(encodeFrame((f as Frame).header, (f as Frame).attachment));
      assertEquals(again, [f]);
    }
  });
}

for (const v of vectors.invalid) {
  Deno.test(`frame vector is rejected: ${v.name}`, () => {
    // The first report is the vector's error (an oversized frame cut short also ends truncated).
    const f = decodeAll(fromHex(v.hex))[0]!;
    assert(isDecodeError(f));
    assertEquals(f.error, v.error);
  });
}

Deno.test("frame stream vector decodes to its frames, in any chunking", () => {
  for (const chunk of [1, 7, 64, 4096]) {
    const out = decodeAll(fromHex(vectors.stream.hex), chunk) as Frame[];
    assertEquals(out.map((f) => f.header), vectors.stream.headers);
    assertEquals(out.map((f) => toHex(f.attachment)), vectors.stream.attachmentsHex);
  }
});

Deno.test("decoder resynchronises after a broken frame", () => {
  const bad = fromHex(vectors.invalid.find((v) => v.name === "header not JSON")!.hex);
  const good = encodeFrame({ jsonrpc: "2.0", id: 3, method: "ping", params: {} });
  const out = decodeAll(new Uint8Array([...bad, ...good]), 5);
  assertEquals(out.length, 2);
  assert(isDecodeError(out[0]!));
  assertEquals((out[1] as Frame).header.id, 3);
});

Deno.test("decoder skips an oversized frame arriving in pieces and goes on", () => {
  const big = new Uint8Array(8 + 5_000_000);
  new DataView(big.buffer).setUint32(4, 5_000_000); // header 0, attachment 5 MB
  const good = encodeFrame({ jsonrpc: "2.0", id: 9, method: "ping", params: {} });
  const out = decodeAll(new Uint8Array([...big, ...good]), 65536);
  assertEquals(out.length, 2);
  assertEquals((out[0] as { error: string }).error, "frame_too_large");
  assertEquals((out[1] as Frame).header.id, 9);
});

Deno.test("fuzz: random bytes and truncated frames never throw", () => {
  let seed = 0x12345678;
  const rand = () => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 0x100000000;
  };
  const valid = vectors.valid.map((v) => fromHex(v.hex));
  for (let i = 0; i < 5000; i++) {
    let bytes: Uint8Array;
    if (i % 2 === 0) {
      bytes = new Uint8Array(Math.floor(rand() * 64));
      for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(rand() * 256);
      if (bytes.length >= 8 && rand() < 0.7) new DataView(bytes.buffer).setUint32(0, Math.floor(rand() * 40));
      if (bytes.length >= 8 && rand() < 0.7) new DataView(bytes.buffer).setUint32(4, Math.floor(rand() * 40));
    } else {
      const v = valid[Math.floor(rand() * valid.length)];
      bytes = v.slice(0, Math.floor(rand() * v.length));
      if (bytes.length > 0 && rand() < 0.5) bytes[Math.floor(rand() * bytes.length)] ^= 0xff;
    }
    const out = decodeAll(bytes, 1 + Math.floor(rand() * 9));
    for (const f of out) {
      if (f && isDecodeError(f)) {
        assert(["frame_too_large", "parse_error", "invalid_request", "truncated"].includes(f.error));
      }
    }
  }
});

Deno.test("FrameStream yields frames and errors in order, whatever the chunking, and a truncated tail", async () => {
  const good = encodeFrame({ jsonrpc: "2.0", id: 1, method: "ping", params: {} }, new Uint8Array([7, 8]));
  const empty = new Uint8Array(8); // header length 0
  const bytes = new Uint8Array([...good, ...empty, ...good, ...good.subarray(0, 5)]);
  for (const chunk of [1, 3, bytes.length]) {
    const pieces = Array.from(
      { length: Math.ceil(bytes.length / chunk) },
      (_, i) => bytes.slice(i * chunk, (i + 1) * chunk),
    );
    const out = await Array.fromAsync(ReadableStream.from(pieces).pipeThrough(new FrameStream()));
    assertEquals(
      out.map((f) => (isDecodeError(f) ? f.error : f.header.id)),
      [1, "invalid_request", 1, "truncated"],
    );
    assertEquals((out[0] as Frame).attachment, new Uint8Array([7, 8]));
  }
});

Deno.test("FrameStream merges consecutive broken frames of one kind into one error with a count", async () => {
  const good = encodeFrame({ jsonrpc: "2.0", id: 2, method: "ping", params: {} });
  const bytes = new Uint8Array([...new Uint8Array(8 * 1000), ...good, ...new Uint8Array(8 * 3)]);
  const out = await Array.fromAsync(ReadableStream.from([bytes]).pipeThrough(new FrameStream()));
  assertEquals(out.map((f) => (isDecodeError(f) ? `${f.error}x${f.count}` : f.header.id)), [
    "invalid_requestx1000",
    2,
    "invalid_requestx3",
  ]);
});

Deno.test("a 4 GiB frame is reported from its 8-byte prefix, before any of it is buffered", async () => {
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setUint32(0, 0xffffffff);
  new DataView(prefix.buffer).setUint32(4, 0xffffffff);
  const reader = ReadableStream.from([prefix]).pipeThrough(new FrameStream()).getReader();
  const first = await reader.read();
  assert(!first.done && isDecodeError(first.value) && first.value.error === "frame_too_large");
  await reader.cancel();
});

Deno.test("FrameErrorCounts keeps counters and a few samples, not one entry per frame", () => {
  const c = new FrameErrorCounts();
  for (let i = 0; i < 100_000; i++) c.record(i % 2 ? "invalid_request" : "parse_error", `frame ${i}`);
  c.record("agent", "-32600 empty frame header");
  const s = c.summary;
  assertEquals([s.total, s.byKind.invalid_request, s.byKind.parse_error, s.byKind.agent], [100_001, 50_000, 50_000, 1]);
  assertEquals(s.samples.length, FrameErrorCounts.SAMPLES);
  assertEquals(s.samples[0], "parse_error: frame 0");
});

Deno.test("FrameWriter: an oversized frame fails only its own write; past its byte cap the writer closes the connection", async () => {
  const path = `${await Deno.makeTempDir()}/w.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  const [conn, peer] = await Promise.all([Deno.connect({ transport: "unix", path }), listener.accept()]);
  listener.close();
  let overflow: Error | undefined;
  const w = new FrameWriter(conn, {
    maxQueuedBytes: 8 << 20,
    peer: "the test peer",
    onOverflow: (e) => (overflow = e),
  });
  const big = { jsonrpc: "2.0" as const, method: "x", params: { pad: "x".repeat(MAX_HEADER) } };
  await assertRejects(() => w.write(big), ProtocolError);
  await w.write({ jsonrpc: "2.0", method: "ping", params: {} }); // still usable
  // The peer reads nothing: the kernel buffer fills, then the queue; past 8 MiB the writer gives up.
  const chunk = new Uint8Array(MAX_ATTACHMENT);
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 64 && !w.failed; i++) writes.push(w.write({ jsonrpc: "2.0", method: "x", params: {} }, chunk));
  await Promise.allSettled(writes);
  assert(overflow instanceof ProtocolError && overflow.message.includes("the test peer"), String(overflow));
  assert(w.failed && w.queuedBytes === 0);
  await assertRejects(() => w.write({ jsonrpc: "2.0", method: "ping", params: {} }), ProtocolError);
  peer.close();
  await Deno.remove(path.slice(0, path.lastIndexOf("/")), { recursive: true });
});
