import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import { expandRules, NetworkBuilder, parsePemCertificates, parseUpstream } from "../../src/net/policy.ts";
import { formatRule } from "../../src/net/rules.ts";
import { parseConfig } from "../../src/sandbox/config.ts";
import { SandboxBuilder } from "../../src/sandbox/builder.ts";
import { InvalidConfigError } from "../../src/errors.ts";

const CA = Deno.readTextFileSync(new URL("../../netd/vectors/test_ca.pem", import.meta.url));
const ids = (n: NetworkBuilder) => expandRules(n.build()).map((r) => r.id);

Deno.test("policy: the default is the public profile; own rules come first, in order, then the profiles'", () => {
  const n = new NetworkBuilder();
  assertEquals(ids(n), ["allow@public"]);
  const m = n.deny("deny@.ads.example").allow("203.0.113.0/24:tcp:80").deny({ destination: "203.0.113.9" })
    .policy("public", "host");
  assertEquals(ids(m), [
    "deny@.ads.example",
    "allow@203.0.113.0/24:tcp:80",
    "deny@203.0.113.9",
    "allow@public",
    "allow@host",
  ]);
  // First match wins: a deny written after a broader allow never shadows it, so the order must be kept exactly.
  assertEquals(ids(new NetworkBuilder().allow("any").deny("10.0.0.0/8")).slice(0, 2), ["allow@any", "deny@10.0.0.0/8"]);
});

Deno.test("policy: profiles expand to their rules; none adds nothing; duplicates collapse; none does not combine", () => {
  assertEquals(ids(new NetworkBuilder().policy("none")), []);
  assertEquals(ids(new NetworkBuilder().policy("host")), ["allow@host"]);
  assertEquals(ids(new NetworkBuilder().policy("all")), ["allow@any"]);
  assertEquals(ids(new NetworkBuilder().policy("public", "host", "public")), ["allow@public", "allow@host"]);
  assertEquals(ids(new NetworkBuilder().policy("none").allow(".pypi.org:tcp:443")), ["allow@.pypi.org:tcp:443"]);
  for (const bad of [["none", "public"], [], ["lan"]]) {
    const e = assertThrows(() => new NetworkBuilder().policy(...(bad as ["none"])), InvalidConfigError);
    assertEquals(e.field, "network.profiles");
  }
});

Deno.test("policy: NetworkBuilder is immutable; allow/deny take strings with or without the action, or objects", () => {
  const base = new NetworkBuilder().policy("none");
  const a = base.allow("allow@example.com:tcp:443");
  const b = base.allow({ destination: "example.com", protocols: ["tcp"], ports: [443] });
  assertEquals(base.build().rules, []);
  assertEquals(a.build(), b.build());
  assertEquals(ids(base.allow("example.com:tcp:443")), ["allow@example.com:tcp:443"]);
  assertThrows(() => base.allow("deny@example.com"), InvalidConfigError);
  assertThrows(() => base.deny({ action: "allow", destination: "x" } as never), InvalidConfigError);
  assertThrows(() => base.allow("example.com:tcp:0"), InvalidConfigError);
});

Deno.test("policy: dns hosts and upstream are validated and canonical", () => {
  const n = new NetworkBuilder().dns({ hosts: { "DB.internal.": "203.0.113.7", six: "2001:DB8::7" } })
    .dns({
      hosts: { cache: "203.0.113.8" },
      upstream: ["127.0.0.53", "203.0.113.1:5353", "[::1]", "[2001:db8::53]:53"],
    });
  assertEquals(n.build().dns, {
    hosts: { "db.internal": "203.0.113.7", six: "2001:db8::7", cache: "203.0.113.8" },
    upstream: ["127.0.0.53:53", "203.0.113.1:5353", "[::1]:53", "[2001:db8::53]:53"],
  });
  assertEquals(parseUpstream("::1"), "[::1]:53");
  const bad: [() => unknown, string, string][] = [
    [() => n.dns({ hosts: { "bad..name": "1.2.3.4" } }), "network.dns.hosts", "empty label"],
    [() => n.dns({ hosts: { ok: "1.2.3" } }), "network.dns.hosts", "not an IP address"],
    [() => n.dns({ hosts: { "host.krunbox.internal": "1.2.3.4" } }), "network.dns.hosts", "cannot be redefined"],
    [() => n.dns({ upstream: ["resolver.example"] }), "network.dns.upstream", 'not "ip[:port]"'],
    [() => n.dns({ upstream: ["1.2.3.4:0"] }), "network.dns.upstream", "port must be 1-65535"],
    [() => n.dns({ upstream: ["1.2.3.4:70000"] }), "network.dns.upstream", "port must be 1-65535"],
    [() => n.dns({ upstream: Array(9).fill("1.1.1.1") }), "network.dns.upstream", "at most 8"],
  ];
  for (const [fn, field, says] of bad) {
    const e = assertThrows(fn, InvalidConfigError);
    assertEquals(e.field, field);
    assert(e.message.includes(says), e.message);
  }
  // "::1:53" is a valid IPv6 address (not ::1 port 53): it is taken as an address, port 53.
  assertEquals(parseUpstream("::1:53"), "[::1:53]:53");
});

Deno.test("policy: maxConnections, tls and trustCa are validated", () => {
  const n = new NetworkBuilder();
  assertEquals(n.build().maxConnections, 256);
  assertEquals(n.maxConnections(64).build().maxConnections, 64);
  for (const bad of [0, -1, 1.5, 65536, NaN]) {
    assertEquals(assertThrows(() => n.maxConnections(bad), InvalidConfigError).field, "network.maxConnections");
  }
  assertEquals(n.tls({ ports: [8443, 443, 443], bypass: ["Pinned.Example.com"] }).build().tls, {
    ports: [443, 8443],
    bypass: ["pinned.example.com"],
  });
  assertEquals(assertThrows(() => n.tls({ ports: [] }), InvalidConfigError).field, "network.tls.ports");
  assertEquals(assertThrows(() => n.tls({ ports: [0] }), InvalidConfigError).field, "network.tls.ports");
  assertEquals(assertThrows(() => n.tls({ bypass: ["*.x.com"] }), InvalidConfigError).field, "network.tls.bypass");

  // A real certificate (CRLF line ends, surrounding blank lines) is kept, normalised; two in one text are two.
  const [one] = n.trustCa(`\n${CA.replaceAll("\n", "\r\n")}\n`).build().trustCa;
  assertEquals(one, CA);
  assertEquals(n.trustCa(CA + CA).build().trustCa.length, 2);
  const bad: [string, string][] = [
    ["not a pem", "no -----BEGIN CERTIFICATE----- block"],
    [CA.replace("MIIB", "M!IB"), "no -----BEGIN CERTIFICATE----- block"],
    [CA.replace("MIIBijCC", "AIIBijCC"), "not one DER certificate"],
    [CA.replace("MIIBijCC", "MIIBijCCMIIBijCC"), "not one DER certificate"],
    [CA + "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n", "text outside its CERTIFICATE blocks"],
    ["-----BEGIN CERTIFICATE-----\nA===\n-----END CERTIFICATE-----", "bad base64"],
  ];
  for (const [pem, says] of bad) {
    const e = assertThrows(() => parsePemCertificates(pem), InvalidConfigError);
    assert(e.message.includes(says), `${says}: ${e.message}`);
    assertEquals(e.field, "network.trustCa");
  }
});

Deno.test("config: the network policy round-trips exactly through JSON, and old stored networks still parse", () => {
  const cfg = new SandboxBuilder("net").image("/srv/root")
    .network((n) =>
      n.policy("none").allow(".pypi.org:tcp:443").deny("[fc00::/7]").allow("127.0.0.1:tcp:8080:ingress")
        .dns({ hosts: { "db.internal": "203.0.113.7" }, upstream: ["127.0.0.53"] }).maxConnections(32).trustCa(CA)
        .tls({ bypass: ["pinned.example.com"] })
    )
    .port(8080, 80).portUdp(5353, 53).port({ host: 8443, guest: 443, bind: "::1" }).build();
  assertEquals(parseConfig(JSON.parse(JSON.stringify(cfg))), cfg);
  assertEquals(cfg.ports.map((p) => `${p.protocol}:${p.bind}:${p.host}`), [
    "tcp:127.0.0.1:8080",
    "udp:127.0.0.1:5353",
    "tcp:::1:8443",
  ]);
  assertEquals(cfg.network.rules.map(formatRule), [
    "allow@.pypi.org:tcp:443",
    "deny@[fc00::/7]",
    "allow@127.0.0.1:tcp:8080:ingress",
  ]);

  // A config stored before policies: { mode: "user" } is the default public policy; ports gain bind 127.0.0.1.
  const old = parseConfig({
    name: "old",
    image: { kind: "dir", path: "/r" },
    network: { mode: "user" },
    ports: [{ host: 1, guest: 2, protocol: "tcp" }],
  });
  assertEquals(old.network, new NetworkBuilder().build());
  assertEquals(expandRules(old.network).map((r) => r.id), ["allow@public"]);
  assertEquals(old.ports, [{ host: 1, guest: 2, protocol: "tcp", bind: "127.0.0.1" }]);
  assertEquals(parseConfig(JSON.parse(JSON.stringify(old))), old);
  assertEquals(
    parseConfig({ name: "o", image: { kind: "dir", path: "/r" }, network: { mode: "none" } }).network.mode,
    "none",
  );
  assertEquals(parseConfig({ name: "o", image: { kind: "dir", path: "/r" } }).network, old.network);
});

Deno.test("builder: network(), disableNetwork() and ports — later calls win, mistakes are typed errors", () => {
  const b = new SandboxBuilder("x").image("/r");
  assertEquals(b.disableNetwork().build().network.mode, "none");
  const back = b.network((n) => n.policy("none")).disableNetwork().network((n) => n.allow("example.com"));
  assertEquals(back.build().network.mode, "user");
  assertEquals(expandRules(back.build().network).map((r) => r.id), ["allow@example.com"], "the earlier policy is kept");
  assertEquals(
    expandRules(b.network((n) => n.deny("metadata")).network((n) => n.deny("private")).build().network).map((r) =>
      r.id
    ),
    [
      "deny@metadata",
      "deny@private",
      "allow@public",
    ],
  );
  const cases: [() => unknown, string][] = [
    [() => b.network(() => ({}) as NetworkBuilder), "network"],
    [() => b.port({ host: 80, guest: 80, bind: "localhost" }).build(), "ports.bind"],
    [() => b.port({ host: 80, guest: 80, bind: "0.0.0.0", protocol: "sctp" as "tcp" }).build(), "ports.protocol"],
    [() => b.port({ host: 80, guest: 0 }).build(), "ports.guest"],
    [() => b.port(8080, 80).port({ host: 8080, guest: 81 }).build(), "ports.host"],
    [() => b.port(8080, 80).disableNetwork().build(), "ports"],
    [() => parseConfig({ name: "x", image: { kind: "dir", path: "/r" }, network: { mode: "tap" } }), "network.mode"],
    [
      () => parseConfig({ name: "x", image: { kind: "dir", path: "/r" }, network: { rules: ["allow@x:tcp:0"] } }),
      "network.rules",
    ],
  ];
  for (const [fn, field] of cases) assertEquals(assertThrows(fn, InvalidConfigError).field, field);
  // The same host port on two addresses, or as tcp and udp, is fine.
  assertEquals(b.port(53, 53).portUdp(53, 53).port({ host: 53, guest: 53, bind: "::1" }).build().ports.length, 3);
});
