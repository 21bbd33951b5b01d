package engine

import (
	"context"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"krunbox.dev/netd/internal/policy"
)

// HostSocketBuffer is the kernel send and receive buffer of every host
// socket netd opens (dialled flows and published-port listeners, whose
// accepted sockets inherit it): fixed, so a guest that stops reading cannot
// make the kernel autotune megabytes per flow on the host.
const HostSocketBuffer = 256 << 10

// setBuffers is a dialer's/listener's Control: it fixes SO_SNDBUF and
// SO_RCVBUF before connect/listen.
func setBuffers(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUF, unix.SO_RCVBUF} {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, HostSocketBuffer); err != nil {
				serr = err
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// listenConfig is how published ports listen.
var listenConfig = net.ListenConfig{Control: setBuffers}

// dial opens a host socket for an allowed guest flow (Options.Dial in tests).
func (e *Engine) dial(ctx context.Context, network string, to netip.AddrPort) (net.Conn, error) {
	if e.opts.Dial != nil {
		return e.opts.Dial(ctx, network, to.String())
	}
	d := net.Dialer{Control: setBuffers}
	return d.DialContext(ctx, network, to.String())
}

// landedOnHost says whether a dialled socket reaches the host itself: its
// peer is a loopback address or its own local address (an address of the
// host netd did not know at start, a DNAT to the host, …).
func landedOnHost(c net.Conn) bool {
	l, lok := addrOf(c.LocalAddr())
	r, rok := addrOf(c.RemoteAddr())
	return lok && rok && (r.IsLoopback() || l == r)
}

func addrOf(a net.Addr) (netip.Addr, bool) {
	switch v := a.(type) {
	case *net.TCPAddr:
		return v.AddrPort().Addr().Unmap().WithZone(""), true
	case *net.UDPAddr:
		return v.AddrPort().Addr().Unmap().WithZone(""), true
	}
	return netip.Addr{}, false
}

// checkLanded re-decides a flow whose dial landed on the host itself as a
// flow to the host group (hostAddress): a denial closes the host socket and
// is reported, the flow refused. d is the flow's own decision (a flow the
// policy already decided as host is not decided again).
func (e *Engine) checkLanded(proto string, dst netip.Addr, port int, name string, d policy.Decision, c net.Conn) bool {
	if d.Group == policy.Host || !landedOnHost(c) {
		return true
	}
	hd := e.pol.Decide(policy.Flow{Direction: policy.Egress, Protocol: proto, Addr: e.cfg.HostIP, Port: port})
	if hd.Allow {
		return true
	}
	if hd.Rule == "" {
		hd.Rule = RuleHostSelf
	}
	e.emit(proto, dst, port, hd, name)
	_ = c.Close()
	return false
}
