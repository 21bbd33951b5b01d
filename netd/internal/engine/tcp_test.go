package engine

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"krunbox.dev/netd/internal/frames"
)

// refusedFast dials and expects a refusal (a RST) well under a second.
func refusedFast(t *testing.T, h *harness, addr string, port int) {
	t.Helper()
	t0 := time.Now()
	c, err := h.dial(addr, port)
	took := time.Since(t0)
	if err == nil {
		c.Close()
		t.Fatalf("%s:%d: connected, want a refusal", addr, port)
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Fatalf("%s:%d: %v, want connection refused", addr, port, err)
	}
	if took > time.Second {
		t.Fatalf("%s:%d: refused after %v, want at once", addr, port, took)
	}
}

func TestTCPHostLoopbackDeniedThenAllowedWithHostGroup(t *testing.T) {
	srv := newEchoServer(t)
	// Default policy (public only): the host's loopback through any of netd's
	// addresses, the guest subnet, private, metadata: refused at once.
	h := start(t, baseConfig(t, rulesPublic, "deny", nil))
	for _, addr := range []string{"10.0.2.254", "10.0.2.2", "10.0.2.3", "10.0.2.99", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1"} {
		refusedFast(t, h, addr, srv.port)
		evs := h.eventsFor(addr)
		if len(evs) == 0 || evs[0].Action != "denied" || evs[0].Protocol != "tcp" || evs[0].Port != srv.port {
			t.Errorf("%s: events %+v", addr, evs)
		}
	}
	if ev := h.eventsFor("10.0.2.254"); len(ev) > 0 && (ev[0].Name != hostName || ev[0].Reason != "default") {
		t.Errorf("host event: %+v", ev[0])
	}
	if ev := h.eventsFor("10.0.2.2"); len(ev) > 0 && ev[0].Rule != RuleGateway {
		t.Errorf("gateway event: %+v", ev[0])
	}
	// The host's own interface addresses are "host", never "public".
	for a := range h.e.pol.Classifier().HostAddrs() {
		if a.Is4() && a.String() != "10.0.2.254" {
			refusedFast(t, h, a.String(), srv.port)
			break
		}
	}
	if n := srv.count(); n != 0 {
		t.Fatalf("the host server accepted %d connections under a public-only policy", n)
	}

	// Positive control, same server, same guest code: the host group allowed.
	h2 := start(t, baseConfig(t, rulesHost, "deny", nil))
	c, err := h2.dial("10.0.2.254", srv.port)
	if err != nil {
		t.Fatalf("host group allowed: %v", err)
	}
	defer c.Close()
	if got, err := echoOnce(c, "hello through netd"); err != nil || got != "hello through netd" {
		t.Fatalf("echo: %q %v", got, err)
	}
	if srv.count() != 1 {
		t.Fatalf("server accepted %d", srv.count())
	}
	if ev := h2.eventsFor("10.0.2.254"); len(ev) == 0 || ev[0].Action != "allowed" || ev[0].Rule != "allow@host" {
		t.Fatalf("allowed event: %+v", ev)
	}
}

func TestTCPDialFailureIsRST(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there now
	h := start(t, baseConfig(t, rulesHost, "deny", nil))
	refusedFast(t, h, "10.0.2.254", port)
	if open, _ := h.e.flows.counts(); open != 0 {
		t.Fatalf("table holds %d after a failed dial", open)
	}
}

func TestTCPHalfClose(t *testing.T) {
	// Server 1 reads to EOF, then answers and closes: the guest's CloseWrite
	// must reach it as EOF while the other direction stays open.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				_, _ = c.Write([]byte("got:" + string(b)))
			}()
		}
	}()
	h := start(t, baseConfig(t, rulesHost, "deny", nil))
	c, err := h.dial("10.0.2.254", ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "got:request" {
		t.Fatalf("half-close guest→host: %q %v", b, err)
	}

	// Server 2 writes and closes its write side first, then reads.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln2.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln2.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte("banner"))
		_ = c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	c2, err := h.dial("10.0.2.254", ln2.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	b, err = io.ReadAll(c2)
	if err != nil || string(b) != "banner" {
		t.Fatalf("half-close host→guest: %q %v", b, err)
	}
	if _, err := c2.Write([]byte("after-eof")); err != nil {
		t.Fatal(err)
	}
	_ = c2.CloseWrite()
	select {
	case s := <-got:
		if s != "after-eof" {
			t.Fatalf("server read %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server never saw the guest's data after its own half-close")
	}
}

func TestThousandShortConnectionsLeaveAnEmptyTable(t *testing.T) {
	srv := newEchoServer(t)
	h := start(t, baseConfig(t, rulesHost, "deny", nil))
	for i := 0; i < 1000; i++ {
		c, err := h.dial("10.0.2.254", srv.port)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if got, err := echoOnce(c, "x"); err != nil || got != "x" {
			t.Fatalf("connection %d: %q %v", i, got, err)
		}
		c.Close()
	}
	if !waitFor(10*time.Second, func() bool {
		open, _ := h.e.flows.counts()
		return open == 0 && h.e.stack.Stats().TCP.CurrentEstablished.Value() == 0 && h.e.liveFlows() == 0
	}) {
		open, _ := h.e.flows.counts()
		t.Fatalf("after 1000 connections: table %d, established %d, live %d", open, h.e.stack.Stats().TCP.CurrentEstablished.Value(), h.e.liveFlows())
	}
	if st := h.e.Stats(); st.Flows != 1000 || st.Connections != 0 || st.RxBytes == 0 || st.TxBytes == 0 {
		t.Fatalf("stats: %+v", st)
	}
	if srv.count() != 1000 {
		t.Fatalf("server accepted %d", srv.count())
	}
	// Events for the same destination are rate-limited: far fewer than 1000.
	if n := len(h.eventsFor("10.0.2.254")); n == 0 || n > 100 {
		t.Fatalf("%d events for 1000 connections", n)
	}
}

func TestMaxConnectionsRefusesNewFlowsOnly(t *testing.T) {
	srv := newEchoServer(t)
	h := start(t, baseConfig(t, rulesHost, "deny", map[string]any{"maxConnections": 4}))
	var held []net.Conn
	for i := 0; i < 4; i++ {
		c, err := h.dial("10.0.2.254", srv.port)
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		held = append(held, c)
	}
	// A flood of new connections: each refused at once, with a limit event.
	var wg sync.WaitGroup
	var mu sync.Mutex
	refused := 0
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := h.dial("10.0.2.254", srv.port)
			if err == nil {
				c.Close()
				return
			}
			mu.Lock()
			refused++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if refused != 50 {
		t.Fatalf("%d of 50 connections over the cap refused", refused)
	}
	found := false
	for _, ev := range h.eventsFor("10.0.2.254") {
		found = found || ev.Reason == "limit"
	}
	if !found {
		t.Fatal("no limit event")
	}
	// The existing flows are unaffected.
	for i, c := range held {
		if got, err := echoOnce(c, "still here"); err != nil || got != "still here" {
			t.Fatalf("held flow %d: %q %v", i, got, err)
		}
	}
	// One ends: a new one fits again.
	held[0].Close()
	if !waitFor(5*time.Second, func() bool { open, _ := h.e.flows.counts(); return open == 3 }) {
		t.Fatal("the closed flow never left the table")
	}
	c, err := h.dial("10.0.2.254", srv.port)
	if err != nil {
		t.Fatalf("after a flow ended: %v", err)
	}
	c.Close()
	for _, c := range held[1:] {
		c.Close()
	}
}

func TestUDPDeniedIsPortUnreachableAllowedRelays(t *testing.T) {
	u := newUDPEcho(t)
	h := start(t, baseConfig(t, rulesPublic, "deny", nil))
	c := h.udp("10.0.2.254", u.port)
	t0 := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	// gVisor's UDP endpoint does not wake a blocked reader on an ICMP error,
	// so wait for the guest stack to have received the port unreachable, then
	// read: the connected socket reports it as connection refused.
	unreach := h.g.Stats().ICMP.V4.PacketsReceived.DstUnreachable
	if !waitFor(time.Second, func() bool { return unreach.Value() >= 1 }) {
		t.Fatalf("no ICMP unreachable reached the guest within a second")
	}
	_ = c.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 16)
	_, err := c.Read(buf)
	if err == nil || !strings.Contains(err.Error(), "refused") || time.Since(t0) > time.Second {
		t.Fatalf("denied UDP: %v after %v, want connection refused (ICMP port unreachable) at once", err, time.Since(t0))
	}
	if u.count() != 0 {
		t.Fatalf("the host UDP server saw %d datagrams", u.count())
	}
	if evs := h.eventsFor("10.0.2.254"); len(evs) == 0 || evs[0].Protocol != "udp" || evs[0].Action != "denied" {
		t.Fatalf("events: %+v", evs)
	}

	h2 := start(t, baseConfig(t, rulesHost, "deny", nil))
	c2 := h2.udp("10.0.2.254", u.port)
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < 3; i++ {
		if _, err := c2.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		n, err := c2.Read(buf)
		if err != nil || string(buf[:n]) != "ping" {
			t.Fatalf("allowed UDP: %q %v", buf[:n], err)
		}
	}
	if st := h2.e.Stats(); st.Connections != 1 || st.Flows != 1 {
		t.Fatalf("one UDP flow: %+v", st)
	}
	c2.Close()
}

func TestFrameTooLongEndsTheLink(t *testing.T) {
	cfg := baseConfig(t, rulesPublic, "deny", nil)
	self := func(pid int32, uid uint32) error { return nil }
	e, err := New(cfg, NewOutput(io.Discard), Options{Peer: self})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.Serve(t.Context()) }()
	c, err := net.Dial("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte{0, 0, 0x05, 0xef}) // 1519 > mtu + 14
	select {
	case err := <-done:
		if !errors.Is(err, frames.ErrFrame) {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an oversized frame did not end the link")
	}
}

func TestHostResetReachesTheGuestAsReset(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 1)
		_, _ = c.Read(buf)
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	}()
	h := start(t, baseConfig(t, rulesHost, "deny", nil))
	c, err := h.dial("10.0.2.254", ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("x"))
	_, err = c.Read(make([]byte, 1))
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Fatalf("after the host reset: %v, want a reset (not a clean EOF)", err)
	}
}

func TestUDPFlowsEndWhenIdle(t *testing.T) {
	u := newUDPEcho(t)
	tp := freePort(t, "udp")
	ports := []map[string]any{{"protocol": "udp", "host": tp, "guest": 80}}
	h := startWith(t, baseConfig(t, rulesHost, "deny", map[string]any{"ports": ports}), Options{UDPIdle: 300 * time.Millisecond})
	h.guestServers(t)
	buf := make([]byte, 64)
	for i := 0; i < 20; i++ { // 20 guest flows (one per source port) to the host
		c := h.udp("10.0.2.254", u.port)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte("x"))
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
	}
	hc, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", itoa(tp)))
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	_ = hc.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = hc.Write([]byte("y"))
	if _, err := hc.Read(buf); err != nil {
		t.Fatalf("published udp: %v", err)
	}
	if open, _ := h.e.flows.counts(); open != 21 {
		t.Fatalf("%d flows open, want 21", open)
	}
	if !waitFor(5*time.Second, func() bool { open, _ := h.e.flows.counts(); return open == 0 && h.e.liveFlows() == 0 }) {
		open, _ := h.e.flows.counts()
		t.Fatalf("idle UDP flows still open: %d", open)
	}
}
