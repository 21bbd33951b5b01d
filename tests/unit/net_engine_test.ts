import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import {
  compileNetd,
  netdCommand,
  netdConfigLine,
  type NetdInvalidLine,
  NetdLineStream,
  type NetdMessage,
  parseNetdLine,
  QEMU_LINK_MTU,
} from "../../src/net/engine.ts";
import { netdOf } from "../../src/sandbox/spec.ts";
import { parseConfig } from "../../src/sandbox/config.ts";
import { SandboxBuilder } from "../../src/sandbox/builder.ts";
import { InvalidConfigError, ProtocolError, SecretUnavailableError } from "../../src/errors.ts";

const VECTOR = JSON.parse(Deno.readTextFileSync(new URL("../../netd/vectors/config.json", import.meta.url)));
const CA = Deno.readTextFileSync(new URL("../../netd/vectors/test_ca.pem", import.meta.url));
const PLACE = { socket: "/run/k/net.sock", hostname: "k" };

Deno.test("engine: the compiled configuration equals netd/vectors/config.json (the shape netd reads)", () => {
  const config = compileNetd(parseConfig(VECTOR.sandbox), new Map(Object.entries(VECTOR.values)), VECTOR.place);
  assertEquals(JSON.parse(netdConfigLine(config)), VECTOR.config);
  // The shape PROTOCOL.md fixes, checked member by member rather than only against our own output.
  const c = VECTOR.config;
  assertEquals(
    Object.keys(c).sort(),
    [
      "dnsAddress",
      "dns",
      "gateway",
      "guest",
      "hostAddress",
      "hostname",
      "maxConnections",
      "mtu",
      "policy",
      "ports",
      "secrets",
      "socket",
      "tls",
      "trustCa",
      "version",
    ].sort(),
  );
  assertEquals([c.version, c.mtu, c.gateway, c.dnsAddress, c.hostAddress, c.policy.default], [
    1,
    1500,
    "10.0.2.2",
    "10.0.2.3",
    "10.0.2.254",
    "deny",
  ]);
  assertEquals(c.guest, { mac: "5a:94:ef:e4:0c:ee", ip: "10.0.2.15", prefix: 24 });
  // Own rules in order, then the profiles' (public, host); an IP is a /32 or /128 block; ids are canonical strings.
  assertEquals(c.policy.rules.map((r: { id: string }) => r.id), [
    "allow@.pypi.org:tcp:443",
    "allow@files.pythonhosted.org:tcp:443",
    "deny@10.0.0.0/8",
    "deny@[fc00::/7]",
    "allow@[2001:db8::1]:udp:53",
    "allow@203.0.113.7:tcp,udp:8000-8999",
    "allow@link-local:icmp",
    "allow@127.0.0.1:tcp:8080:ingress",
    "deny@any:ingress",
    "allow@public",
    "allow@host",
  ]);
  assertEquals(c.policy.rules[0], {
    action: "allow",
    direction: "egress",
    dest: { kind: "suffix", suffix: ".pypi.org" },
    protocols: ["tcp"],
    ports: [{ from: 443, to: 443 }],
    id: "allow@.pypi.org:tcp:443",
  });
  assertEquals(c.policy.rules[4].dest, { kind: "cidr", cidr: "2001:db8::1/128" });
  assertEquals(c.policy.rules[5].dest, { kind: "cidr", cidr: "203.0.113.7/32" });
  assertEquals(c.policy.rules[9].dest, { kind: "group", group: "public" });
  assertEquals(c.policy.rules[8], {
    action: "deny",
    direction: "ingress",
    dest: { kind: "any" },
    protocols: [],
    ports: [],
    id: "deny@any:ingress",
  });
  assertEquals(c.dns, { hosts: { "db.internal": "203.0.113.7" }, upstream: ["127.0.0.53:53"] });
  assertEquals(c.ports, [
    { protocol: "tcp", bind: "127.0.0.1", host: 8080, guest: 80 },
    { protocol: "udp", bind: "::1", host: 5353, guest: 53 },
  ]);
  assertEquals([c.maxConnections, c.trustCa, c.tls], [64, [CA], { ports: [443], bypass: ["pinned.example.com"] }]);
  assertEquals(c.secrets, [{
    env: "OPENAI_API_KEY",
    placeholder: "krunbox-secret-000102030405060708090a0b0c0d0e0f",
    value: "sk-vector-value",
    hosts: ["api.openai.com"],
    patterns: ["*.openai.com"],
    inBody: false,
    inQuery: true,
  }]);
});

Deno.test("engine: the link's MTU is the backend's: qemu's large one, libkrun's 1500; out of range is INVALID_CONFIG", () => {
  const cfg = parseConfig({ name: "m", image: { kind: "dir", path: "/" } });
  assertEquals(netdOf(cfg, "/s/net.sock", "qemu")?.mtu, QEMU_LINK_MTU);
  assertEquals(netdOf(cfg, "/s/net.sock", "libkrun")?.mtu, 1500);
  assertEquals(QEMU_LINK_MTU + 14 <= 65550 && QEMU_LINK_MTU <= 65535, true); // a frame fits the stream framing
  for (const mtu of [575, 65536, 1500.5]) {
    const e = assertThrows(() => compileNetd(cfg, undefined, { ...PLACE, mtu }), InvalidConfigError);
    assertEquals(e.field, "network.mtu");
  }
  assertEquals(compileNetd(cfg, undefined, { ...PLACE, mtu: 9000 }).mtu, 9000);
});

Deno.test("engine: the value goes only into the netd line; without it compiling is SECRET_UNAVAILABLE", () => {
  const cfg = new SandboxBuilder("k").image("/r").secretEnv("TOKEN", "tok-1234567890", "api.example.com").build();
  assert(!JSON.stringify(cfg).includes("tok-1234567890"));
  const line = netdConfigLine(compileNetd(cfg, new Map([["TOKEN", "tok-1234567890"]]), PLACE));
  assert(line.endsWith("}\n") && line.indexOf("\n") === line.length - 1, "one line");
  assert(line.includes('"value":"tok-1234567890"'));
  assert(line.includes(cfg.secrets[0].placeholder));
  assertThrows(() => compileNetd(cfg, undefined, PLACE), SecretUnavailableError);
  assertThrows(() => compileNetd(cfg, new Map([["OTHER", "x"]]), PLACE), SecretUnavailableError);
  // A value that did not come through SecretBuilder is checked again on its way out (it goes into HTTP headers).
  assertThrows(() => compileNetd(cfg, new Map([["TOKEN", "tok\r\nX-Injected: 1"]]), PLACE), InvalidConfigError);
  assertThrows(() => compileNetd(cfg, new Map([["TOKEN", ""]]), PLACE), InvalidConfigError);
  // No secrets: an empty list (netd intercepts no TLS at all).
  const plain = compileNetd(new SandboxBuilder("p").image("/r").build(), undefined, PLACE);
  assertEquals([plain.secrets, plain.policy.rules.map((r) => r.id)], [[], ["allow@public"]]);
  // A sandbox without a network has no engine; a bad MAC or socket is refused.
  assertThrows(
    () => compileNetd(new SandboxBuilder("n").image("/r").disableNetwork().build(), undefined, PLACE),
    InvalidConfigError,
  );
  const cfgPlain = new SandboxBuilder("p").image("/r").build();
  for (const mac of ["5a:94:ef:e4:0c", "5b:94:ef:e4:0c:ee", "ZZ:94:ef:e4:0c:ee"]) {
    assertThrows(() => compileNetd(cfgPlain, undefined, { ...PLACE, mac }), InvalidConfigError);
  }
  assertThrows(() => compileNetd(cfgPlain, undefined, { ...PLACE, socket: "net.sock" }), InvalidConfigError);
  assertEquals([netdCommand("stats"), netdCommand("shutdown")], ['{"cmd":"stats"}\n', '{"cmd":"shutdown"}\n']);
});

const STDOUT = JSON.parse(Deno.readTextFileSync(new URL("../../netd/vectors/stdout.json", import.meta.url)));

/** A parsed message as the vector writes it: Dates as ISO text, absent members left out. */
function plain(m: NetdMessage): unknown {
  return JSON.parse(JSON.stringify(m));
}

Deno.test("engine: netd's stdout lines parse into typed messages (netd/vectors/stdout.json)", () => {
  assert(STDOUT.valid.length >= 10);
  for (const { line, message } of STDOUT.valid) {
    const m = parseNetdLine(line);
    assertEquals(plain(m), JSON.parse(JSON.stringify(message)), line.slice(0, 80));
    if (m.type === "event") assert(m.event.timestamp instanceof Date && !Number.isNaN(m.event.timestamp.getTime()));
  }
  // Every action and reason of PROTOCOL.md is accepted.
  const event = JSON.parse(STDOUT.valid.find((v: { line: string }) => v.line.includes('"event"')).line);
  for (const action of ["allowed", "denied", "secret-substituted", "secret-blocked"]) {
    for (const reason of ["rule", "default", "dns", "rebinding", "limit", "secret"]) {
      const m = parseNetdLine(JSON.stringify({ ...event, action, reason }));
      assert(m.type === "event" && m.event.action === action && m.event.reason === reason);
    }
  }
});

Deno.test("engine: hostile or broken lines are ProtocolErrors, never a crash", () => {
  assert(STDOUT.invalid.length >= 25);
  for (const line of [...STDOUT.invalid, JSON.stringify({ type: "error", message: "x".repeat(70_000) })]) {
    const e = assertThrows(() => parseNetdLine(line), ProtocolError);
    assertEquals(e.code, "PROTOCOL", line.slice(0, 60));
  }
  assertThrows(() => parseNetdLine(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), ProtocolError);
  // __proto__ in a line is just a member: nothing is polluted.
  parseNetdLine('{"type":"stats","__proto__":{"polluted":1},"rxBytes":1,"txBytes":2,"connections":0,"flows":3}');
  assertEquals(({} as Record<string, unknown>).polluted, undefined);
});

Deno.test("engine: stats carry netd's dropped-event count when it sends one", () => {
  const m = parseNetdLine('{"type":"stats","rxBytes":1,"txBytes":2,"connections":0,"flows":3,"eventsDropped":41}');
  assertEquals(m, { type: "stats", stats: { rxBytes: 1, txBytes: 2, connections: 0, flows: 3, eventsDropped: 41 } });
  const old = parseNetdLine('{"type":"stats","rxBytes":1,"txBytes":2,"connections":0,"flows":3}');
  assertEquals(old.type === "stats" && "eventsDropped" in old.stats, false);
  assertThrows(
    () => parseNetdLine('{"type":"stats","rxBytes":1,"txBytes":2,"connections":0,"flows":3,"eventsDropped":-1}'),
    ProtocolError,
  );
});

async function collect(chunks: (string | Uint8Array)[], max?: number): Promise<(NetdMessage | NetdInvalidLine)[]> {
  const enc = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      for (const ch of chunks) c.enqueue(typeof ch === "string" ? enc.encode(ch) : ch);
      c.close();
    },
  });
  return await Array.fromAsync(body.pipeThrough(new NetdLineStream(max)));
}

Deno.test("engine: NetdLineStream splits lines across chunks, skips blank ones, discards an oversized line and goes on", async () => {
  const ready = '{"type":"ready","version":"0.1.0"}';
  const stats = '{"type":"stats","rxBytes":1,"txBytes":2,"connections":0,"flows":3}';
  // One byte at a time, CRLF ends, blank lines, a last line without "\n".
  const text = `${ready}\r\n\n${stats}\n${stats}`;
  const bytes = [...new TextEncoder().encode(text)].map((b) => new Uint8Array([b]));
  assertEquals((await collect(bytes)).map((m) => m.type), ["ready", "stats", "stats"]);
  // A line over the limit (here 200 bytes, sent in pieces) is one `invalid` entry; the lines around it still parse.
  const huge = `{"type":"error","message":"${"x".repeat(1000)}"}`;
  const out = await collect(
    [`${ready}\n${huge.slice(0, 300)}`, huge.slice(300, 700), `${huge.slice(700)}\n${stats}\n`],
    200,
  );
  assertEquals(out.map((m) => m.type), ["ready", "invalid", "stats"]);
  assert((out[1] as NetdInvalidLine).error instanceof ProtocolError);
  // Garbage is an `invalid` entry too, never an exception out of the stream.
  const mixed = await collect(["garbage\n", '{"type":"nope"}\n', `${ready}\n`, new Uint8Array([0xff, 0x0a])]);
  assertEquals(mixed.map((m) => m.type), ["invalid", "invalid", "ready", "invalid"]);
});
