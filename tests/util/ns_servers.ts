/**
 * The servers of the test "internet" host, run inside its network namespace
 * by tests/util/netns.ts (`ip netns exec <ns> deno run -A ns_servers.ts
 * <address> <hosts json>`):
 *
 * - HTTP on port 80 of every address of the namespace: `GET /` answers `hello from the test internet`,
 *   `GET /bytes/<n>` answers n bytes (the bench's download).
 * - DNS on `<address>:53` (UDP): A records from the hosts map, NXDOMAIN for
 *   any other name; every query it sees is printed as one JSON line
 *   (`{"query":"name"}`) on stdout, so a test can assert it never saw one.
 * - TCP on every address, each connection's end printed as a `{"tcp":{…}}`
 *   line ({@link TcpRecord}) so a test sees what the server saw:
 *   - port {@link ECHO_PORT}: echo; a line at each accept and close with the
 *     connections open then (a test reads the server's own count of a flood);
 *   - port {@link DRAIN_PORT}: reads until EOF, only then answers
 *     `<bytes> <sha256 hex>\n` and closes (the guest's half-close);
 *   - port {@link BANNER_PORT}: writes {@link BANNER}, half-closes, reads
 *     until EOF and closes (the host's half-close, then the guest's data).
 *
 * Prints `{"ready":true}` once both listen.
 *
 * @module
 */

import dgram from "node:dgram";
import { createHash } from "node:crypto";

/** What `GET /` answers. */
export const HELLO = "hello from the test internet\n";

/** Reads the question name of a DNS query (no compression in questions). */
function questionName(msg: Uint8Array): { name: string; end: number } | undefined {
  const labels: string[] = [];
  let at = 12;
  while (at < msg.length) {
    const len = msg[at];
    if (len === 0) return { name: labels.join("."), end: at + 1 };
    if (len > 63 || at + 1 + len > msg.length) return undefined;
    labels.push(new TextDecoder().decode(msg.subarray(at + 1, at + 1 + len)));
    at += 1 + len;
  }
  return undefined;
}

/** The answer to one query: A records from `hosts` (type A only), else NXDOMAIN. */
function answer(msg: Uint8Array, hosts: Record<string, string>): Uint8Array | undefined {
  if (msg.length < 17) return undefined;
  const q = questionName(msg);
  if (!q || q.end + 4 > msg.length) return undefined;
  const qtype = (msg[q.end] << 8) | msg[q.end + 1];
  const question = msg.subarray(12, q.end + 4);
  const ip = hosts[q.name.toLowerCase()];
  const header = new Uint8Array(12);
  header.set(msg.subarray(0, 2), 0);
  header[2] = 0x80 | (msg[2] & 0x01); // a response; recursion desired echoed
  header[3] = 0x80 | (ip === undefined ? 3 : 0); // recursion available; NXDOMAIN when unknown
  header[5] = 1; // one question
  const records: number[] = [];
  if (ip !== undefined && qtype === 1) {
    header[7] = 1; // one answer
    records.push(0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...ip.split(".").map(Number));
  }
  const out = new Uint8Array(12 + question.length + records.length);
  out.set(header, 0);
  out.set(question, 12);
  out.set(records, 12 + question.length);
  return out;
}

/** The echo server's port. */
export const ECHO_PORT = 7;
/** The read-to-EOF-then-answer server's port. */
export const DRAIN_PORT = 9;
/** The banner-then-half-close server's port. */
export const BANNER_PORT = 19;
/** What the banner server writes before its half-close. */
export const BANNER = "banner from the test internet\n";

/** One `{"tcp":…}` line: what a TCP server of the namespace saw. */
export type TcpRecord =
  | { readonly server: "echo"; readonly event: "open" | "close"; readonly open: number; readonly peer: string }
  /** How the read side ended: `eof` (a FIN), or the error (a reset). */
  | { readonly server: "drain"; readonly bytes: number; readonly sha256: string; readonly end: string }
  | { readonly server: "banner"; readonly got: string; readonly end: string };

function record(r: TcpRecord): void {
  console.log(JSON.stringify({ tcp: r }));
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // closed
  }
}

/** `eof` once `conn` reads EOF; any error (a reset) ends it with the error's name and message. */
async function readToEnd(conn: Deno.Conn, onData: (b: Uint8Array) => void): Promise<string> {
  const buf = new Uint8Array(64 * 1024);
  try {
    for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) onData(buf.subarray(0, n));
    return "eof";
  } catch (e) {
    return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  }
}

async function writeAll(conn: Deno.Conn, b: Uint8Array): Promise<void> {
  for (let at = 0; at < b.length;) at += await conn.write(b.subarray(at));
}

let echoOpen = 0;
async function serveEcho(conn: Deno.Conn): Promise<void> {
  const peer = `${(conn.remoteAddr as Deno.NetAddr).hostname}:${(conn.remoteAddr as Deno.NetAddr).port}`;
  record({ server: "echo", event: "open", open: ++echoOpen, peer });
  try {
    const buf = new Uint8Array(64 * 1024);
    for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) await writeAll(conn, buf.subarray(0, n));
  } catch {
    // reset
  } finally {
    closeQuietly(conn);
    record({ server: "echo", event: "close", open: --echoOpen, peer });
  }
}

async function serveDrain(conn: Deno.Conn): Promise<void> {
  try {
    const hash = createHash("sha256");
    let bytes = 0;
    const end = await readToEnd(conn, (b) => {
      bytes += b.length;
      hash.update(b);
    });
    const sha256 = hash.digest("hex");
    record({ server: "drain", bytes, sha256, end });
    if (end === "eof") await writeAll(conn, new TextEncoder().encode(`${bytes} ${sha256}\n`));
  } finally {
    closeQuietly(conn);
  }
}

async function serveBanner(conn: Deno.TcpConn): Promise<void> {
  try {
    await writeAll(conn, new TextEncoder().encode(BANNER));
    await conn.closeWrite();
    let got = "";
    const end = await readToEnd(conn, (b) => (got += new TextDecoder().decode(b)));
    record({ server: "banner", got, end });
  } finally {
    closeQuietly(conn);
  }
}

function serve(port: number, handle: (conn: Deno.TcpConn) => Promise<void>): void {
  const listener = Deno.listen({ hostname: "0.0.0.0", port });
  (async () => {
    for await (const conn of listener) handle(conn).catch(() => {});
  })();
}

const CHUNK = new Uint8Array(64 * 1024).fill(0x61);

/**
 * One HTTP/1.0 exchange on a raw connection: read the request head, answer,
 * close. (A raw server, because a client's half-close after its request,
 * as busybox nc does, must not cut the answer short.)
 */
async function serveHttp(conn: Deno.Conn): Promise<void> {
  try {
    const buf = new Uint8Array(8192);
    let head = "";
    while (!head.includes("\r\n\r\n") && head.length < 8192) {
      const n = await conn.read(buf);
      if (n === null) break;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    const path = head.split(" ")[1] ?? "/";
    const m = /^\/bytes\/(\d+)$/.exec(path);
    const enc = new TextEncoder();
    if (!m) {
      await conn.write(enc.encode(`HTTP/1.0 200 OK\r\ncontent-length: ${HELLO.length}\r\n\r\n${HELLO}`));
      return;
    }
    let left = Number(m[1]);
    await conn.write(enc.encode(`HTTP/1.0 200 OK\r\ncontent-length: ${left}\r\n\r\n`));
    while (left > 0) {
      const n = Math.min(left, CHUNK.length);
      let at = 0;
      while (at < n) at += await conn.write(CHUNK.subarray(at, n));
      left -= n;
    }
  } finally {
    try {
      conn.close();
    } catch {
      // closed
    }
  }
}

async function main(address: string, hosts: Record<string, string>): Promise<void> {
  const dns = dgram.createSocket("udp4");
  dns.on("message", (msg, rinfo) => {
    const bytes = new Uint8Array(msg);
    const q = questionName(bytes);
    console.log(JSON.stringify({ query: q?.name ?? null, from: rinfo.address }));
    const reply = answer(bytes, hosts);
    if (reply) dns.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => dns.bind(53, address, resolve));
  const listener = Deno.listen({ hostname: "0.0.0.0", port: 80 });
  (async () => {
    for await (const conn of listener) serveHttp(conn).catch(() => {});
  })();
  serve(ECHO_PORT, serveEcho);
  serve(DRAIN_PORT, serveDrain);
  serve(BANNER_PORT, serveBanner);
  console.log(JSON.stringify({ ready: true }));
}

if (import.meta.main) {
  await main(Deno.args[0], JSON.parse(Deno.args[1] ?? "{}"));
}
