import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import {
  compileNetd,
  netdCommand,
  netdConfigLine,
  type NetdInvalidLine,
  NetdLineStream,
  type NetdMessage,
  parseNetdLine,
} from "../../src/net/engine.ts";
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

const EVENT = {
  type: "event",
  timestamp: "2026-12-02T05:00:00.123Z",
  direction: "egress",
  protocol: "tcp",
  address: "203.0.113.7",
  port: 443,
  name: "api.example.com",
  action: "allowed",
  rule: "allow@.example.com",
  reason: "rule",
};

Deno.test("engine: netd's stdout lines parse into typed messages", () => {
  assertEquals(parseNetdLine('{"type":"ready","version":"0.1.0"}'), { type: "ready", version: "0.1.0" });
  assertEquals(parseNetdLine(JSON.stringify({ type: "ready", version: "0.1.0", caPem: CA })), {
    type: "ready",
    version: "0.1.0",
    caPem: CA,
  });
  assertEquals(parseNetdLine(JSON.stringify(EVENT)), {
    type: "event",
    event: {
      timestamp: new Date("2026-12-02T05:00:00.123Z"),
      direction: "egress",
      protocol: "tcp",
      address: "203.0.113.7",
      port: 443,
      name: "api.example.com",
      action: "allowed",
      rule: "allow@.example.com",
      reason: "rule",
    },
  });
  // Optional members absent or null; an IPv6 address comes back canonical; `repeated` passes; unknown members are ignored.
  const { name: _n, rule: _r, ...bare } = EVENT;
  const m = parseNetdLine(JSON.stringify({
    ...bare,
    address: "2001:DB8:0::1",
    protocol: "icmp",
    port: 0,
    action: "denied",
    reason: "default",
    rule: null,
    repeated: 7,
    future: { x: 1 },
  }));
  assert(m.type === "event");
  assertEquals([m.event.address, m.event.name, m.event.rule, m.event.repeated], [
    "2001:db8::1",
    undefined,
    undefined,
    7,
  ]);
  for (const action of ["allowed", "denied", "secret-substituted", "secret-blocked"]) {
    for (const reason of ["rule", "default", "dns", "rebinding", "limit", "secret"]) {
      assertEquals(
        (parseNetdLine(JSON.stringify({ ...EVENT, action, reason })) as { event: { action: string } }).event.action,
        action,
      );
    }
  }
  assertEquals(parseNetdLine('{"type":"stats","rxBytes":123,"txBytes":456,"connections":3,"flows":1000}'), {
    type: "stats",
    stats: { rxBytes: 123, txBytes: 456, connections: 3, flows: 1000 },
  });
  assertEquals(parseNetdLine('{"type":"error","message":"peer pid 4242 is not the VMM"}'), {
    type: "error",
    message: "peer pid 4242 is not the VMM",
  });
});

Deno.test("engine: hostile or broken lines are ProtocolErrors, never a crash; guest-chosen names cannot inject control characters", () => {
  const bad: string[] = [
    "",
    "not json",
    "[]",
    "null",
    '"ready"',
    "{}",
    '{"type":"hello"}',
    '{"type":"ready"}',
    '{"type":"ready","version":1}',
    JSON.stringify({
      type: "ready",
      version: "1",
      caPem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
    }),
    JSON.stringify({ ...EVENT, action: "maybe" }),
    JSON.stringify({ ...EVENT, reason: "whim" }),
    JSON.stringify({ ...EVENT, direction: "sideways" }),
    JSON.stringify({ ...EVENT, protocol: "sctp" }),
    JSON.stringify({ ...EVENT, port: 65536 }),
    JSON.stringify({ ...EVENT, port: -1 }),
    JSON.stringify({ ...EVENT, port: 1.5 }),
    JSON.stringify({ ...EVENT, port: "443" }),
    JSON.stringify({ ...EVENT, address: "evil.example" }),
    JSON.stringify({ ...EVENT, address: "10.0.0.1; rm -rf /" }),
    JSON.stringify({ ...EVENT, timestamp: "yesterday" }),
    JSON.stringify({ ...EVENT, timestamp: 1764651600 }),
    JSON.stringify({ ...EVENT, name: 42 }),
    JSON.stringify({ ...EVENT, name: "a".repeat(1025) }),
    JSON.stringify({ ...EVENT, repeated: -2 }),
    JSON.stringify({ type: "stats", rxBytes: -1, txBytes: 0, connections: 0, flows: 0 }),
    JSON.stringify({ type: "stats", rxBytes: 2 ** 60, txBytes: 0, connections: 0, flows: 0 }),
    JSON.stringify({ type: "stats", rxBytes: 1, txBytes: 0, connections: 0 }),
    JSON.stringify({ type: "error" }),
    JSON.stringify({ type: "error", message: "x".repeat(70_000) }),
    '{"type":"stats","rxBytes":1e999,"txBytes":0,"connections":0,"flows":0}',
  ];
  for (const line of bad) {
    const e = assertThrows(() => parseNetdLine(line), ProtocolError);
    assertEquals(e.code, "PROTOCOL", line.slice(0, 60));
  }
  assertThrows(() => parseNetdLine(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), ProtocolError);
  // __proto__ in a line is just a member: nothing is polluted.
  parseNetdLine('{"type":"stats","__proto__":{"polluted":1},"rxBytes":1,"txBytes":2,"connections":0,"flows":3}');
  assertEquals(({} as Record<string, unknown>).polluted, undefined);
  // A name the guest chose (a DNS query) is escaped, not passed raw to a terminal or a log.
  const m = parseNetdLine(JSON.stringify({ ...EVENT, name: "\x1b[2Jevil\u0000.\u202eexample\\" }));
  assert(m.type === "event");
  assertEquals(m.event.name, "\\x1b[2Jevil\\x00.\\u{202e}example\\\\");
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
