package engine

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"krunbox.dev/netd/internal/config"
)

func (e *Engine) installUDP() {
	e.stack.SetTransportProtocolHandler(udp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		host, leak, ok := e.decideUDP(id)
		if !ok {
			return false
		}
		// The forwarder calls its handler at once, on this goroutine.
		return udp.NewForwarder(e.stack, func(r *udp.ForwarderRequest) { e.handleUDPFlow(r, host, leak) }).HandlePacket(id, pkt)
	})
}

// decideUDP runs for the first datagram of a flow (later ones reach the
// flow's endpoint): an allowed flow takes a slot and gets its connected host
// socket (no datagram sent yet); false makes the stack answer ICMP port
// unreachable. leak reports a placeholder in one of its datagrams (nil
// without secrets).
func (e *Engine) decideUDP(id stack.TransportEndpointID) (host net.Conn, leak func(*config.Secret), ok bool) {
	dst, port := netipAddr(id.LocalAddress), int(id.LocalPort)
	d, target, name := e.egress("udp", dst, port)
	if !d.Allow {
		e.emit("udp", dst, port, d, name)
		return nil, nil, false
	}
	if !e.flows.acquire() {
		e.emit("udp", dst, port, limited, name)
		return nil, nil, false
	}
	e.emit("udp", dst, port, d, name)
	ctx, cancel := context.WithTimeout(e.ctx, DialTimeout)
	host, err := e.dial(ctx, "udp", netip.AddrPortFrom(target, uint16(port)))
	cancel()
	if err != nil || !e.checkLanded("udp", dst, port, name, d, host) {
		e.flows.release()
		return nil, nil, false
	}
	return host, e.leakTo("udp", dst, port, name), true
}

// handleUDPFlow runs (synchronously, after decideUDP took a slot and dialled
// host) for an allowed flow: relayed both ways until the idle time passes
// with nothing either way.
func (e *Engine) handleUDPFlow(r *udp.ForwarderRequest, host net.Conn, leak func(*config.Secret)) {

	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		e.flows.release()
		_ = host.Close()
		return
	}
	guest := gonet.NewUDPConn(&wq, ep)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.flows.release()
		e.relayUDP(guest, host, e.opts.UDPIdle, leak)
	}()
}

// relayUDP copies datagrams both ways between two connected sockets until
// either fails or idle passes with no datagram either way. With leak (a
// sandbox with secrets), a datagram from a holding a placeholder is dropped
// and reported.
func (e *Engine) relayUDP(a, b net.Conn, idle time.Duration, leak func(*config.Secret)) {
	closeBoth, done := e.pair(a, b)
	defer done()
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn, scan bool) {
		defer wg.Done()
		defer closeBoth()
		buf := make([]byte, 65536)
		for {
			_ = src.SetReadDeadline(time.Now().Add(idle))
			n, err := src.Read(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
					continue
				}
				return
			}
			last.Store(time.Now().UnixNano())
			if scan {
				if s := e.leaks.in(buf[:n]); s != nil {
					leak(s)
					continue
				}
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go pipe(a, b, false)
	go pipe(b, a, leak != nil)
	wg.Wait()
}
