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
 *
 * Prints `{"ready":true}` once both listen.
 *
 * @module
 */

import dgram from "node:dgram";

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
  console.log(JSON.stringify({ ready: true }));
}

if (import.meta.main) {
  await main(Deno.args[0], JSON.parse(Deno.args[1] ?? "{}"));
}
