package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"

	"krunbox.dev/netd/internal/config"
	"krunbox.dev/netd/internal/guest"
)

// The guest side of every integration test is a second, real gVisor netstack
// with its own Ethernet NIC, speaking the stream framing over the frame
// socket to an engine running in this process. Host servers listen on
// 127.0.0.1 only.

const guestMACStr = "5a:94:ef:e4:0c:ee"

// baseConfig is a configuration with the given policy rules (JSON) and
// default; extra fields are merged in.
func baseConfig(t testing.TB, rules string, def string, extra map[string]any) *config.Config {
	t.Helper()
	dir, err := os.MkdirTemp("", "netd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m := map[string]any{
		"version": 1, "socket": filepath.Join(dir, "net.sock"), "mtu": 1500,
		"guest":   map[string]any{"mac": guestMACStr, "ip": "10.0.2.15", "prefix": 24},
		"gateway": "10.0.2.2", "dnsAddress": "10.0.2.3", "hostAddress": "10.0.2.254", "hostname": "t",
		"policy": map[string]any{"rules": json.RawMessage(rules), "default": def},
	}
	for k, v := range extra {
		m[k] = v
	}
	line, _ := json.Marshal(m)
	c, err := config.Parse(line)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return c
}

type harness struct {
	t      testing.TB
	e      *Engine
	g      *stack.Stack
	guest  *guest.Guest
	mu     sync.Mutex
	events []Event
	served chan error
}

// start runs an engine for cfg and a guest stack connected to it.
func start(t testing.TB, cfg *config.Config) *harness {
	t.Helper()
	return startWith(t, cfg, Options{})
}

// startWith is start with engine options (the peer check and upstreams are
// the harness's).
func startWith(t testing.TB, cfg *config.Config, opts Options) *harness {
	t.Helper()
	self := int32(os.Getpid())
	opts.Peer = func(pid int32, uid uint32) error {
		if pid != self {
			return fmt.Errorf("pid %d", pid)
		}
		return nil
	}
	opts.Upstreams = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}
	e, err := New(cfg, NewOutput(io.Discard), opts)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, e: e, served: make(chan error, 1)}
	e.Events.Sink = func(ev Event) {
		h.mu.Lock()
		h.events = append(h.events, ev)
		h.mu.Unlock()
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { h.served <- e.Serve(context.Background()) }()
	conn, err := net.Dial("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	g, err := guest.New(conn, cfg.GuestMAC, netip.PrefixFrom(cfg.GuestIP, cfg.Subnet.Bits()), cfg.GatewayIP, cfg.MTU)
	if err != nil {
		t.Fatal(err)
	}
	h.g = g.Stack
	h.guest = g
	t.Cleanup(func() {
		g.Close()
		e.Close()
	})
	return h
}

func (h *harness) dial(addr string, port int) (*gonet.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.guest.DialTCP(ctx, addr, port)
}

func (h *harness) udp(addr string, port int) *gonet.UDPConn {
	c, err := h.guest.DialUDP(addr, port)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

// eventsFor returns the events seen for an address.
func (h *harness) eventsFor(addr string) []Event {
	return h.eventsWhere(func(ev Event) bool { return ev.Address == addr })
}

// eventsWhere returns the events seen that keep says to keep.
func (h *harness) eventsWhere(keep func(Event) bool) []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []Event
	for _, ev := range h.events {
		if keep(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}

// echoServer is a TCP echo server on 127.0.0.1 that counts what it accepts.
type echoServer struct {
	ln       net.Listener
	mu       sync.Mutex
	accepted int
	port     int
}

func newEchoServer(t testing.TB) *echoServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted++
			s.mu.Unlock()
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return s
}

func (s *echoServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// udpEcho is a UDP echo server on 127.0.0.1 that counts datagrams.
type udpEcho struct {
	pc   net.PacketConn
	mu   sync.Mutex
	seen int
	port int
}

func newUDPEcho(t testing.TB) *udpEcho {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &udpEcho{pc: pc, port: pc.LocalAddr().(*net.UDPAddr).Port}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.mu.Lock()
			u.seen++
			u.mu.Unlock()
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return u
}

func (u *udpEcho) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen
}

// echoOnce writes msg and reads the same number of bytes back.
func echoOnce(c net.Conn, msg string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return string(buf), err
}

const (
	rulesPublic = `[{"action":"allow","direction":"egress","dest":{"kind":"group","group":"public"},"id":"allow@public"}]`
	rulesHost   = `[{"action":"allow","direction":"egress","dest":{"kind":"group","group":"host"},"id":"allow@host"},` +
		`{"action":"allow","direction":"egress","dest":{"kind":"group","group":"public"},"id":"allow@public"}]`
)

// ping sends one ICMP echo from the guest and reports whether a reply came
// within 300 ms.
func (h *harness) ping(t *testing.T, addr string) bool {
	t.Helper()
	var wq waiter.Queue
	ep, err := h.g.NewEndpoint(icmp.ProtocolNumber4, ipv4.ProtocolNumber, &wq)
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	echo := make([]byte, header.ICMPv4MinimumSize+4)
	hdr := header.ICMPv4(echo)
	hdr.SetType(header.ICMPv4Echo)
	copy(echo[header.ICMPv4MinimumSize:], "ping")
	to := guest.Full(addr, 0)
	if _, err := ep.Write(bytes.NewReader(echo), tcpip.WriteOptions{To: &to}); err != nil {
		t.Fatal(err)
	}
	we, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	deadline := time.After(300 * time.Millisecond)
	for {
		var out bytes.Buffer
		if _, err := ep.Read(&out, tcpip.ReadOptions{}); err == nil {
			return true
		}
		select {
		case <-ch:
		case <-deadline:
			return false
		}
	}
}
