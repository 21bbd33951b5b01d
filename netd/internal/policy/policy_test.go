package policy

import (
	"net/netip"
	"testing"
	"time"

	"krunbox.dev/netd/internal/config"
)

// compile parses a policy through the real config parser.
func compile(t *testing.T, rules string, def string) *Policy {
	t.Helper()
	line := `{"version":1,"socket":"/tmp/x.sock","guest":{"mac":"5a:94:ef:e4:0c:ee","ip":"10.0.2.15","prefix":24},` +
		`"gateway":"10.0.2.2","dnsAddress":"10.0.2.3","hostAddress":"10.0.2.254","policy":{"rules":` + rules + `,"default":"` + def + `"}}`
	c, err := config.Parse([]byte(line))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	cl := NewClassifier([]netip.Addr{netip.MustParseAddr("192.0.2.10"), c.HostIP}, c.Subnet, []netip.Addr{c.GatewayIP, c.DNSIP, c.HostIP})
	return New(c.Policy, cl)
}

func egress(proto, addr string, port int, names ...string) Flow {
	return Flow{Direction: Egress, Protocol: proto, Addr: netip.MustParseAddr(addr), Port: port, Names: names}
}

func TestFirstMatchWins(t *testing.T) {
	p := compile(t, `[
		{"action":"deny","dest":{"kind":"cidr","cidr":"203.0.113.7"},"id":"deny7"},
		{"action":"allow","dest":{"kind":"cidr","cidr":"203.0.113.0/24"},"id":"allow24"},
		{"action":"deny","dest":{"kind":"any"},"id":"denyall"},
		{"action":"allow","dest":{"kind":"any"},"id":"never"}]`, "allow")
	for _, c := range []struct {
		addr  string
		allow bool
		rule  string
	}{{"203.0.113.7", false, "deny7"}, {"203.0.113.8", true, "allow24"}, {"198.51.100.1", false, "denyall"}} {
		d := p.Decide(egress("tcp", c.addr, 80))
		if d.Allow != c.allow || d.Rule != c.rule || d.Reason != ReasonRule {
			t.Errorf("%s: %+v, want allow=%v rule=%s", c.addr, d, c.allow, c.rule)
		}
	}
}

func TestCIDRAndGroups(t *testing.T) {
	p := compile(t, `[{"action":"allow","dest":{"kind":"group","group":"public"},"id":"pub"},
		{"action":"allow","dest":{"kind":"cidr","cidr":"2001:db8:1::/48"},"id":"v6"}]`, "deny")
	for addr, allow := range map[string]bool{
		"203.0.113.7": true, "10.0.0.1": false, "127.0.0.1": false, "169.254.169.254": false,
		"192.0.2.10": false /* the host's own address is never public */, "10.0.2.254": false,
		"10.0.2.99": false, "2001:db8:1::5": true, "fe80::1": false, "0.0.0.0": false, "224.0.0.1": false,
	} {
		if d := p.Decide(egress("tcp", addr, 443)); d.Allow != allow {
			t.Errorf("%s: %+v, want allow=%v", addr, d, allow)
		}
	}
	if d := p.Decide(egress("tcp", "10.0.0.1", 443)); d.Reason != ReasonDefault || d.Rule != "" {
		t.Errorf("default: %+v", d)
	}
	if d := p.Decide(egress("tcp", "10.0.2.99", 443)); d.Rule != RuleReserved {
		t.Errorf("reserved: %+v", d)
	}
	all := compile(t, `[{"action":"allow","dest":{"kind":"any"},"id":"any"}]`, "allow")
	if d := all.Decide(egress("udp", "240.0.0.1", 53)); d.Allow {
		t.Errorf("reserved allowed by any: %+v", d)
	}
}

func TestPortsAndProtocols(t *testing.T) {
	p := compile(t, `[{"action":"allow","dest":{"kind":"any"},"protocols":["tcp"],"ports":[{"from":443,"to":443},{"from":8000,"to":8080}],"id":"web"},
		{"action":"allow","dest":{"kind":"any"},"protocols":["icmp"],"id":"ping"}]`, "deny")
	for _, c := range []struct {
		proto string
		port  int
		allow bool
	}{{"tcp", 443, true}, {"tcp", 442, false}, {"tcp", 444, false}, {"tcp", 8000, true}, {"tcp", 8080, true},
		{"tcp", 8081, false}, {"udp", 443, false}, {"icmp", 0, true}} {
		if d := p.Decide(egress(c.proto, "203.0.113.1", c.port)); d.Allow != c.allow {
			t.Errorf("%s/%d: %+v, want %v", c.proto, c.port, d, c.allow)
		}
	}
}

func TestDomainAndSuffix(t *testing.T) {
	p := compile(t, `[{"action":"deny","dest":{"kind":"domain","name":"bad.example.com"},"id":"bad"},
		{"action":"allow","dest":{"kind":"suffix","suffix":".Example.com."},"id":"sfx"},
		{"action":"allow","dest":{"kind":"domain","name":"API.other.org"},"id":"api"}]`, "deny")
	for _, c := range []struct {
		names []string
		allow bool
		rule  string
	}{
		{[]string{"a.example.com"}, true, "sfx"}, {[]string{"example.com"}, true, "sfx"},
		{[]string{"x.a.example.com."}, true, "sfx"}, {[]string{"notexample.com"}, false, ""},
		{[]string{"bad.example.com"}, false, "bad"}, {[]string{"api.other.org"}, true, "api"},
		{[]string{"x.api.other.org"}, false, ""}, {nil, false, ""},
	} {
		if d := p.Decide(egress("tcp", "203.0.113.9", 443, c.names...)); d.Allow != c.allow || d.Rule != c.rule {
			t.Errorf("%v: %+v, want %v %s", c.names, d, c.allow, c.rule)
		}
	}
}

func TestIngress(t *testing.T) {
	none := compile(t, `[]`, "deny")
	if d := none.Decide(Flow{Direction: Ingress, Protocol: "tcp", Addr: netip.MustParseAddr("127.0.0.1"), Port: 80}); !d.Allow {
		t.Errorf("no ingress rule: %+v", d)
	}
	p := compile(t, `[{"action":"deny","direction":"ingress","dest":{"kind":"group","group":"loopback"},"id":"noloop"},
		{"action":"allow","direction":"egress","dest":{"kind":"any"},"id":"e"}]`, "deny")
	if d := p.Decide(Flow{Direction: Ingress, Protocol: "tcp", Addr: netip.MustParseAddr("127.0.0.1"), Port: 80}); d.Allow || d.Rule != "noloop" {
		t.Errorf("ingress deny: %+v", d)
	}
	if d := p.Decide(Flow{Direction: Ingress, Protocol: "tcp", Addr: netip.MustParseAddr("203.0.113.1"), Port: 80}); !d.Allow {
		t.Errorf("unmatched ingress: %+v", d)
	}
}

func TestNameDecision(t *testing.T) {
	allowlist := compile(t, `[{"action":"allow","dest":{"kind":"domain","name":"api.example.com"},"protocols":["tcp"],"ports":[{"from":443,"to":443}],"id":"api"}]`, "deny")
	for name, allow := range map[string]bool{"api.example.com": true, "API.Example.com.": true, "other.example.com": false, "example.com": false, "exfil.attacker.test": false} {
		if got, _ := allowlist.NameDecision(name); got != allow {
			t.Errorf("allowlist %s: %v", name, got)
		}
	}
	public := compile(t, `[{"action":"deny","dest":{"kind":"suffix","suffix":".blocked.test"},"id":"blk"},
		{"action":"deny","dest":{"kind":"domain","name":"partial.test"},"ports":[{"from":80,"to":80}],"id":"p80"},
		{"action":"allow","dest":{"kind":"group","group":"public"},"id":"pub"}]`, "deny")
	for name, allow := range map[string]bool{"x.blocked.test": false, "blocked.test": false, "partial.test": true, "anything.test": true} {
		if got, _ := public.NameDecision(name); got != allow {
			t.Errorf("public %s: %v", name, got)
		}
	}
	none := compile(t, `[]`, "deny")
	if got, _ := none.NameDecision("example.com"); got {
		t.Error("none: a name was forwardable")
	}
	denyAll := compile(t, `[{"action":"deny","dest":{"kind":"any"},"id":"x"},{"action":"allow","dest":{"kind":"domain","name":"a.test"},"id":"a"}]`, "allow")
	if got, rule := denyAll.NameDecision("a.test"); got || rule != "x" {
		t.Errorf("deny any first: %v %s", got, rule)
	}
}

func TestAnswerAllowed(t *testing.T) {
	p := compile(t, `[{"action":"allow","dest":{"kind":"domain","name":"api.example.com"},"id":"api"},
		{"action":"allow","dest":{"kind":"cidr","cidr":"10.1.0.0/16"},"id":"corp"},
		{"action":"allow","dest":{"kind":"group","group":"public"},"id":"pub"}]`, "deny")
	for addr, keep := range map[string]bool{
		"203.0.113.7": true, "127.0.0.1": false, "10.2.0.1": false, "10.1.2.3": true, "192.168.1.1": false,
		"169.254.169.254": false, "fd00:ec2::254": false, "fe80::1": false, "::1": false, "192.0.2.10": false,
		"10.0.2.254": false, "0.0.0.0": false, "::ffff:127.0.0.1": false, "64:ff9b::7f00:1": false,
	} {
		if got, _ := p.AnswerAllowed(netip.MustParseAddr(addr)); got != keep {
			t.Errorf("%s: keep=%v, want %v", addr, got, keep)
		}
	}
	host := compile(t, `[{"action":"allow","dest":{"kind":"group","group":"loopback"},"id":"lo"}]`, "deny")
	if got, _ := host.AnswerAllowed(netip.MustParseAddr("127.0.0.1")); !got {
		t.Error("loopback allowed, answer dropped")
	}
	all := compile(t, `[]`, "allow")
	if got, _ := all.AnswerAllowed(netip.MustParseAddr("10.0.0.1")); !got {
		t.Error("default allow, answer dropped")
	}
}

func TestNamesTTL(t *testing.T) {
	now := time.Unix(1000, 0)
	n := NewNames(func() time.Time { return now })
	a := netip.MustParseAddr("203.0.113.7")
	n.Add("Api.Example.com.", a, 5*time.Second)
	if got := n.Lookup(a); len(got) != 1 || got[0] != "api.example.com" {
		t.Fatalf("lookup: %v", got)
	}
	now = now.Add(59 * time.Second)
	if len(n.Lookup(a)) != 1 {
		t.Fatal("expired before the 60 s minimum")
	}
	now = now.Add(2 * time.Second)
	if len(n.Lookup(a)) != 0 {
		t.Fatal("not expired after the TTL")
	}
	n.Add("long.test", a, time.Hour)
	now = now.Add(30 * time.Minute)
	if got := n.Lookup(netip.MustParseAddr("::ffff:203.0.113.7")); len(got) != 1 {
		t.Fatalf("mapped lookup: %v", got)
	}
	b := netip.MustParseAddr("203.0.113.8")
	n.Add("forever.test", b, 1<<31*time.Second)
	now = now.Add(MaxTTL + time.Second)
	if len(n.Lookup(b)) != 0 {
		t.Fatal("a huge TTL outlived MaxTTL")
	}
}

func TestCIDRRulesIgnoreTheGuestSubnet(t *testing.T) {
	p := compile(t, `[{"action":"deny","dest":{"kind":"cidr","cidr":"10.0.0.0/8"},"id":"lan"},
		{"action":"allow","dest":{"kind":"group","group":"host"},"id":"host"},
		{"action":"allow","dest":{"kind":"cidr","cidr":"10.0.2.0/24"},"id":"subnet"}]`, "deny")
	if d := p.Decide(egress("tcp", "10.0.2.254", 80)); !d.Allow || d.Rule != "host" {
		t.Errorf("hostAddress: %+v", d)
	}
	if d := p.Decide(egress("tcp", "10.0.3.1", 80)); d.Allow || d.Rule != "lan" {
		t.Errorf("LAN: %+v", d)
	}
	if d := p.Decide(egress("tcp", "10.0.2.2", 80)); d.Allow {
		t.Errorf("gateway allowed by a subnet CIDR: %+v", d)
	}
}
