package engine

import (
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

func freePort(t *testing.T, proto string) int {
	if proto == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// guestServers runs a TCP and a UDP echo server inside the guest stack on
// port 80; it returns a counter of accepted TCP connections.
func (h *harness) guestServers(t *testing.T) func() int {
	fa := tcpip.FullAddress{NIC: 1, Addr: tcpipAddr(h.e.cfg.GuestIP), Port: 80}
	ln, err := gonet.ListenTCP(h.g, fa, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan struct{}, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	uc, err := gonet.DialUDP(h.g, &fa, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = uc.WriteTo([]byte("guest:"+string(buf[:n])), from)
		}
	}()
	return func() int { return len(accepted) }
}

func TestPublishedPorts(t *testing.T) {
	tp, up := freePort(t, "tcp"), freePort(t, "udp")
	ports := []map[string]any{
		{"protocol": "tcp", "bind": "127.0.0.1", "host": tp, "guest": 80},
		{"protocol": "udp", "bind": "127.0.0.1", "host": up, "guest": 80},
	}
	h := start(t, baseConfig(t, rulesPublic, "deny", map[string]any{"ports": ports}))
	accepted := h.guestServers(t)
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(tp)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := echoOnce(c, "to the guest"); err != nil || got != "to the guest" {
		t.Fatalf("tcp port: %q %v", got, err)
	}
	c.Close()
	uc, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", itoa(up)))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	_ = uc.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = uc.Write([]byte("dgram"))
	buf := make([]byte, 64)
	n, err := uc.Read(buf)
	if err != nil || string(buf[:n]) != "guest:dgram" {
		t.Fatalf("udp port: %q %v", buf[:n], err)
	}
	if evs := h.eventsFor("127.0.0.1"); len(evs) < 2 || evs[0].Direction != "ingress" || evs[0].Action != "allowed" {
		t.Fatalf("ingress events: %+v", evs)
	}
	if accepted() != 1 {
		t.Fatalf("guest accepted %d", accepted())
	}

	// The same ports behind an ingress rule denying loopback clients: the
	// client is reset and the guest accepts nothing.
	tp2, up2 := freePort(t, "tcp"), freePort(t, "udp")
	ports2 := []map[string]any{
		{"protocol": "tcp", "host": tp2, "guest": 80},
		{"protocol": "udp", "host": up2, "guest": 80},
	}
	rules := `[{"action":"deny","direction":"ingress","dest":{"kind":"group","group":"loopback"},"id":"deny-ingress@loopback"}]`
	h2 := start(t, baseConfig(t, rules, "deny", map[string]any{"ports": ports2}))
	accepted2 := h2.guestServers(t)
	// The reset may come during connect or on the first read.
	if c2, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(tp2))); err == nil {
		_ = c2.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = c2.Write([]byte("x"))
		if _, err := c2.Read(buf); err == nil || (!strings.Contains(err.Error(), "reset") && err != io.EOF) {
			t.Fatalf("denied ingress: %v, want a reset", err)
		}
		c2.Close()
	} else if !strings.Contains(err.Error(), "reset") {
		t.Fatalf("denied ingress: %v, want a reset", err)
	}
	uc2, _ := net.Dial("udp", net.JoinHostPort("127.0.0.1", itoa(up2)))
	defer uc2.Close()
	_ = uc2.SetDeadline(time.Now().Add(300 * time.Millisecond))
	_, _ = uc2.Write([]byte("dgram"))
	if _, err := uc2.Read(buf); err == nil {
		t.Fatal("denied udp ingress answered")
	}
	if accepted2() != 0 {
		t.Fatalf("guest accepted %d behind a deny", accepted2())
	}
	if evs := h2.eventsFor("127.0.0.1"); len(evs) == 0 || evs[0].Action != "denied" || evs[0].Rule != "deny-ingress@loopback" {
		t.Fatalf("events: %+v", evs)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
