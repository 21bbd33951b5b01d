package policy

import (
	"encoding/json"
	"net/netip"
	"os"
	"testing"

	"krunbox.dev/netd/internal/config"
)

// The configuration the TypeScript side compiles (netd/vectors/config.json):
// netd accepts it, secrets included, and decides as its rules say.
func TestCompiledConfigVector(t *testing.T) {
	b, err := os.ReadFile("../../vectors/config.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Config map[string]any `json:"config"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	line, _ := json.Marshal(v.Config)
	c, err := config.Parse(line)
	if err != nil {
		t.Fatalf("the compiled vector: %v", err)
	}
	if len(c.Secrets) == 0 {
		t.Fatal("the compiled vector has no secret: it should show one")
	}
	p := New(c.Policy, c.DNSHosts, NewClassifier([]netip.Addr{c.HostIP}, c.Subnet, []netip.Addr{c.GatewayIP, c.DNSIP, c.HostIP}))
	for _, tc := range []struct {
		f     Flow
		allow bool
		rule  string
	}{
		{egress("tcp", "203.0.113.50", 443, "files.pypi.org"), true, "allow@.pypi.org:tcp:443"},
		{egress("tcp", "203.0.113.50", 443, "pypi.org"), true, "allow@.pypi.org:tcp:443"},
		// A name rule grants public addresses only: a private answer for
		// it is decided by the address rules.
		{egress("tcp", "10.1.2.3", 443, "x.pypi.org"), false, "deny@10.0.0.0/8"},
		{egress("tcp", "10.1.2.3", 80), false, "deny@10.0.0.0/8"},
		{egress("udp", "2001:db8::1", 53), true, "allow@[2001:db8::1]:udp:53"},
		{egress("udp", "fd00::1", 53), false, "deny@[fc00::/7]"},
		{egress("tcp", "203.0.113.7", 8500), true, "allow@203.0.113.7:tcp,udp:8000-8999"},
		{egress("icmp", "169.254.1.1", 0), true, "allow@link-local:icmp"},
		{egress("tcp", "169.254.169.254", 80), false, ""},
		{egress("tcp", "198.51.100.1", 22), true, "allow@public"},
		{egress("tcp", "10.0.2.254", 5432), true, "allow@host"},
		{Flow{Direction: Ingress, Protocol: "tcp", Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080}, true, "allow@127.0.0.1:tcp:8080:ingress"},
		{Flow{Direction: Ingress, Protocol: "udp", Addr: netip.MustParseAddr("::1"), Port: 5353}, false, "deny@any:ingress"},
	} {
		d := p.Decide(tc.f)
		if d.Allow != tc.allow || d.Rule != tc.rule {
			t.Errorf("%+v: %+v, want allow=%v rule=%q", tc.f, d, tc.allow, tc.rule)
		}
	}
	if ok, _ := p.NameDecision("evil.example"); !ok {
		t.Error("with allow@public every name may resolve")
	}
}
