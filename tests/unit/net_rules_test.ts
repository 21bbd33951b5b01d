import { assert, assertEquals, assertThrows } from "../util/assert.ts";
import { formatRule, parseRule, type Rule, type RuleInit } from "../../src/net/rules.ts";
import { canonicalIp, cidrContains, parseCidr, parseIp } from "../../src/net/ip.ts";
import { InvalidConfigError } from "../../src/errors.ts";

const r = (
  action: Rule["action"],
  destination: Rule["destination"],
  protocols: Rule["protocols"] = [],
  ports: [number, number][] = [],
  direction: Rule["direction"] = "egress",
): Rule => ({ action, direction, destination, protocols, ports: ports.map(([from, to]) => ({ from, to })) });

// [compact string, the Rule it is, its canonical string, the same rule in object form]
const VALID: [string, Rule, string, RuleInit][] = [
  ["allow@any", r("allow", { kind: "any" }), "allow@any", { action: "allow", destination: "any" }],
  // Beside the host's name (controls for the suffixes that cover it).
  ["allow@.corp.internal", r("allow", { kind: "suffix", suffix: ".corp.internal" }), "allow@.corp.internal", {
    action: "allow",
    destination: ".corp.internal",
  }],
  ["deny@10.0.0.0/8", r("deny", { kind: "cidr", cidr: "10.0.0.0/8" }), "deny@10.0.0.0/8", {
    action: "deny",
    destination: { kind: "cidr", cidr: "10.0.0.0/8" },
  }],
  ["deny@0.0.0.0/0", r("deny", { kind: "cidr", cidr: "0.0.0.0/0" }), "deny@0.0.0.0/0", {
    action: "deny",
    destination: "0.0.0.0/0",
  }],
  ["deny@203.0.113.7", r("deny", { kind: "ip", ip: "203.0.113.7" }), "deny@203.0.113.7", {
    action: "deny",
    destination: "203.0.113.7",
  }],
  ["deny@203.0.113.7/32", r("deny", { kind: "ip", ip: "203.0.113.7" }), "deny@203.0.113.7", {
    action: "deny",
    destination: { kind: "cidr", cidr: "203.0.113.7/32" },
  }],
  ["deny@[::1]", r("deny", { kind: "ip", ip: "::1" }), "deny@[::1]", { action: "deny", destination: "::1" }],
  ["deny@[FC00::/7]", r("deny", { kind: "cidr", cidr: "fc00::/7" }), "deny@[fc00::/7]", {
    action: "deny",
    destination: "[fc00::/7]",
  }],
  ["deny@[fd00:ec2:0:0:0:0:0:254]", r("deny", { kind: "ip", ip: "fd00:ec2::254" }), "deny@[fd00:ec2::254]", {
    action: "deny",
    destination: { kind: "ip", ip: "fd00:ec2::254" },
  }],
  [
    "allow@[2001:db8::1/128]:tcp:443",
    r("allow", { kind: "ip", ip: "2001:db8::1" }, ["tcp"], [[443, 443]]),
    "allow@[2001:db8::1]:tcp:443",
    {
      action: "allow",
      destination: "2001:db8::1",
      protocols: "tcp",
      ports: 443,
    },
  ],
  ["allow@api.example.com", r("allow", { kind: "domain", name: "api.example.com" }), "allow@api.example.com", {
    action: "allow",
    destination: "API.Example.COM.",
  }],
  [
    "allow@.pypi.org:tcp:443",
    r("allow", { kind: "suffix", suffix: ".pypi.org" }, ["tcp"], [[443, 443]]),
    "allow@.pypi.org:tcp:443",
    {
      action: "allow",
      destination: { kind: "suffix", suffix: ".pypi.org" },
      protocols: ["tcp"],
      ports: ["443"],
    },
  ],
  [
    "allow@public:tcp:80,443,8000-8999",
    r("allow", { kind: "group", group: "public" }, ["tcp"], [[80, 80], [443, 443], [8000, 8999]]),
    "allow@public:tcp:80,443,8000-8999",
    {
      action: "allow",
      destination: "public",
      protocols: ["tcp"],
      ports: [443, { from: 8000, to: 8999 }, 80, 443],
    },
  ],
  [
    "allow@127.0.0.1:tcp:8080:ingress",
    r("allow", { kind: "ip", ip: "127.0.0.1" }, ["tcp"], [[8080, 8080]], "ingress"),
    "allow@127.0.0.1:tcp:8080:ingress",
    {
      action: "allow",
      destination: "127.0.0.1",
      protocols: ["tcp"],
      ports: [8080],
      direction: "ingress",
    },
  ],
  ["deny@private:ingress", r("deny", { kind: "group", group: "private" }, [], [], "ingress"), "deny@private:ingress", {
    action: "deny",
    destination: { kind: "group", group: "private" },
    direction: "ingress",
  }],
  [
    "ALLOW@Link-Local:UDP,TCP:1-65535:EGRESS",
    r("allow", { kind: "group", group: "link-local" }, ["tcp", "udp"], [[1, 65535]]),
    "allow@link-local:tcp,udp:1-65535",
    {
      action: "allow",
      destination: "link-local",
      protocols: ["udp", "tcp"],
      ports: ["1-65535"],
      direction: "egress",
    },
  ],
  ["deny@metadata", r("deny", { kind: "group", group: "metadata" }), "deny@metadata", {
    action: "deny",
    destination: "metadata",
  }],
  ["allow@multicast:udp", r("allow", { kind: "group", group: "multicast" }, ["udp"]), "allow@multicast:udp", {
    action: "allow",
    destination: "multicast",
    protocols: "udp",
  }],
  ["allow@loopback:icmp", r("allow", { kind: "group", group: "loopback" }, ["icmp"]), "allow@loopback:icmp", {
    action: "allow",
    destination: "loopback",
    protocols: ["icmp"],
  }],
  [
    "allow@host:tcp:5432",
    r("allow", { kind: "group", group: "host" }, ["tcp"], [[5432, 5432]]),
    "allow@host:tcp:5432",
    {
      action: "allow",
      destination: "host",
      protocols: ["tcp"],
      ports: [5432],
    },
  ],
  // A one-label domain spelled like a keyword is written with a trailing dot.
  ["allow@host.", r("allow", { kind: "domain", name: "host" }), "allow@host.", {
    action: "allow",
    destination: { kind: "domain", name: "host" },
  }],
  ["allow@db", r("allow", { kind: "domain", name: "db" }), "allow@db", { action: "allow", destination: "db" }],
  [
    "allow@_dmarc.example.com:udp:53",
    r("allow", { kind: "domain", name: "_dmarc.example.com" }, ["udp"], [[53, 53]]),
    "allow@_dmarc.example.com:udp:53",
    {
      action: "allow",
      destination: "_dmarc.example.com",
      protocols: ["udp"],
      ports: [53],
    },
  ],
  [
    "allow@xn--bcher-kva.example:tcp:443:ingress",
    r("allow", { kind: "domain", name: "xn--bcher-kva.example" }, ["tcp"], [[443, 443]], "ingress"),
    "allow@xn--bcher-kva.example:tcp:443:ingress",
    {
      action: "allow",
      destination: "xn--bcher-kva.example",
      protocols: ["tcp"],
      ports: [443],
      direction: "ingress",
    },
  ],
  [
    "allow@203.0.113.0/24:ingress",
    r("allow", { kind: "cidr", cidr: "203.0.113.0/24" }, [], [], "ingress"),
    "allow@203.0.113.0/24:ingress",
    {
      action: "allow",
      destination: "203.0.113.0/24",
      direction: "ingress",
    },
  ],
];

Deno.test("rules: every valid form parses to its Rule, from a string and from an object alike", () => {
  for (const [text, rule, canonical, object] of VALID) {
    const fromString = parseRule(text);
    assertEquals(fromString, rule, text);
    assertEquals(parseRule(object), rule, JSON.stringify(object));
    assertEquals(formatRule(rule), canonical, text);
  }
});

Deno.test("rules: string ↔ object round trip — parse(format(r)) is r, format(parse(s)) is s for a canonical s", () => {
  for (const [, rule, canonical] of VALID) {
    assertEquals(parseRule(formatRule(rule)), rule, canonical);
    assertEquals(formatRule(parseRule(canonical)), canonical);
    assertEquals(parseRule(rule), rule, "a Rule is a valid input (idempotent)");
    assertEquals(parseRule(JSON.parse(JSON.stringify(rule))), rule, "a stored rule parses back");
  }
});

// [rule, what the message must say]
const INVALID: [string | RuleInit, string][] = [
  ["allow", 'has no "@"'],
  ["permit@any", "action must be allow or deny"],
  ["allow@", "empty destination"],
  ["allow@10.0.0.0/33", 'prefix "33" is out of range (0-32'],
  ["allow@[::/129]", 'prefix "129" is out of range (0-128'],
  ["allow@10.0.0.0/-1", "out of range"],
  ["allow@10.0.0.0/08", "out of range"],
  ["allow@10.0.0.1/8", "host bits set (the network is 10.0.0.0/8)"],
  ["allow@[fc00::1/7]", "host bits set (the network is fc00::/7)"],
  ["allow@10.0.0.256", "not a valid IPv4 address"],
  ["allow@10.1", "not a valid IPv4 address"],
  ["allow@010.0.0.1", "not a valid IPv4 address"],
  ["allow@1.2.3.4.5", "not a valid IPv4 address"],
  ["allow@::1", "IPv6 address goes in brackets"],
  ["allow@2001:db8:0:0:0:0:0:1", "goes in brackets: [2001:db8::1]"],
  ["allow@[::1]/128", "the prefix goes inside the brackets"],
  ["allow@[::1", 'has "[" without "]"'],
  ["allow@[example.com]", "brackets are for IPv6 addresses only"],
  ["allow@[1:2:3:4:5:6:7:8:9]", "is not an IPv6 address"],
  ["allow@[fe80::1%eth0]", "is not an IPv6 address"],
  ["allow@[::1]x", 'unexpected "x" after "]"'],
  ["allow@x:tcp:0", "port 0 is out of range (1-65535)"],
  ["allow@x:tcp:65536", "port 65536 is out of range (1-65535)"],
  ["allow@x:tcp:0443", "leading zero"],
  ["allow@x:tcp:9000-8000", "port range 9000-8000 is reversed (write 8000-9000)"],
  ["allow@x:tcp:1-2-3", "is not from-to"],
  ["allow@x:tcp:80,", "empty entry"],
  ["allow@x:tcp:80x", "not a number"],
  ["allow@x:tpc", 'unknown protocol "tpc"'],
  ["allow@x:tcp,sctp:80", 'unknown protocol "sctp"'],
  ["allow@x:tcp,tcp", "names a protocol twice"],
  ["allow@x:icmp:8", "icmp has no ports"],
  ["allow@x:tcp,icmp:8", "icmp has no ports"],
  ["allow@x:443", "ports need a protocol"],
  ["allow@x:tcp:443:outbound", '"outbound" is not a direction'],
  ["allow@x:ingress:tcp", "after the direction"],
  ["allow@x:tcp:80:443", "ports come once"],
  ["allow@x::tcp", "empty part"],
  ["allow@x:", "empty part"],
  ["allow@-bad.example.com", 'bad label "-bad"'],
  ["allow@bad-.example.com", 'bad label "bad-"'],
  ["allow@a..example.com", "empty label"],
  ["allow@.", "empty domain"],
  ["allow@..example.com", "empty label"],
  ["allow@" + "a".repeat(64) + ".com", "label of 64 characters"],
  ["allow@" + "a.".repeat(127) + "com", "at most 253"],
  ["allow@bücher.example", "punycode"],
  ["allow@exa$mple.com", "bad label"],
  ["allow@*.example.com", "wildcards are written as a suffix: .example.com"],
  ["allow@host.krunbox.internal", "reachable only through the host group"],
  // A suffix above the host's name would let the guest reach the host's loopback by resolving it.
  ["allow@.internal:tcp", "covers host.krunbox.internal"],
  ["allow@.krunbox.internal", "covers host.krunbox.internal"],
  ["deny@.Host.Krunbox.Internal.", "covers host.krunbox.internal"],
  [{ action: "allow", destination: { kind: "suffix", suffix: ".internal" } }, "covers host.krunbox.internal"],
  [{ action: "allow", destination: ".krunbox.internal" }, "covers host.krunbox.internal"],
  ["allow@ example.com", "whitespace"],
  // netd refuses IPv4-mapped blocks (it compares IPv4 as IPv4): refused here with the form to write.
  ["deny@[::ffff:0.0.0.0/96]", "write the IPv4 form 0.0.0.0/0"],
  ["allow@[::ffff:10.0.0.0/104]", "write the IPv4 form 10.0.0.0/8"],
  ["allow@[::ffff:203.0.113.7]", "write the IPv4 form 203.0.113.7"],
  ["allow@[::ffff:a00:1]", "write the IPv4 form 10.0.0.1"],
  [{ action: "allow", destination: { kind: "ip", ip: "::ffff:203.0.113.7" } }, "IPv4-mapped"],
  [{ action: "deny", destination: { kind: "cidr", cidr: "::ffff:0:0/96" } }, "IPv4-mapped"],
  [{ action: "allow", destination: { kind: "group", group: "lan" as "public" } }, 'unknown group "lan"'],
  [{ action: "allow", destination: { kind: "cidr", cidr: "10.0.0.0/40" } }, "out of range"],
  [{ action: "allow", destination: { kind: "ip", ip: "10.0.0" } }, "is not an IP address"],
  [{ action: "allow", destination: { kind: "suffix", suffix: "example.com" } }, 'starting with "."'],
  [{ action: "allow", destination: { kind: "domain", name: "" } }, "empty domain"],
  [
    { action: "allow", destination: { kind: "wild" } as unknown as RuleInit["destination"] },
    "unknown destination kind",
  ],
  [{ action: "maybe" as "allow", destination: "any" }, "action must be allow or deny"],
  [{ action: "allow", destination: "any", direction: "both" as "egress" }, "direction must be egress or ingress"],
  [{ action: "allow", destination: "any", protocols: ["tcp"], ports: [1.5] }, "not an integer"],
  [{ action: "allow", destination: "any", protocols: ["tcp"], ports: [{ from: 10, to: 1 }] }, "reversed"],
  [{ action: "allow", destination: "any", protocols: ["icmp"], ports: [1] }, "icmp has no ports"],
  [{ action: "allow", destination: "any", protocols: ["gre" as "tcp"] }, 'unknown protocol "gre"'],
];

Deno.test("rules: every bad rule is an InvalidConfigError naming the rule and what is wrong", () => {
  for (const [rule, says] of INVALID) {
    const e = assertThrows(() => parseRule(rule), InvalidConfigError);
    assertEquals(e.field, "network.rules");
    assert(e.message.includes(says), `${JSON.stringify(rule)}: expected "${says}" in "${e.message}"`);
    const named = typeof rule === "string" ? rule.slice(0, 30) : JSON.stringify(rule).slice(0, 30);
    assert(e.message.includes(named), `the message names the rule: ${e.message}`);
  }
});

Deno.test("ip: canonical text (RFC 5952), strict parsing, CIDR membership", () => {
  const canon: [string, string][] = [
    ["2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["::", "::"],
    ["1::", "1::"],
    ["::ffff:192.0.2.1", "::ffff:192.0.2.1"],
    ["64:ff9b::192.0.2.1", "64:ff9b::c000:201"],
    ["0.0.0.0", "0.0.0.0"],
  ];
  for (const [input, out] of canon) assertEquals(canonicalIp(input), out, input);
  for (
    const bad of ["", "1.2.3", "1.2.3.04", "256.0.0.1", "1:2:3:4:5:6:7", "1::2::3", "::1.2.3.4:1", "12345::", "g::1"]
  ) {
    assertEquals(parseIp(bad), undefined, bad);
  }
  const net = parseCidr("172.16.0.0/12");
  assert(typeof net !== "string");
  assert(cidrContains(net, parseIp("172.31.255.255")!));
  assert(!cidrContains(net, parseIp("172.32.0.0")!));
  assert(!cidrContains(net, parseIp("::ffff:172.16.0.1")!), "another family never matches");
  const six = parseCidr("fe80::/10");
  assert(typeof six !== "string" && cidrContains(six, parseIp("febf::1")!) && !cidrContains(six, parseIp("fec0::1")!));
});
