package engine

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

func (e *Engine) installUDP() {
	fwd := udp.NewForwarder(e.stack, e.handleUDPFlow)
	e.stack.SetTransportProtocolHandler(udp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		return e.decideUDP(id) && fwd.HandlePacket(id, pkt)
	})
}

// decideUDP runs for the first datagram of a flow (later ones reach the
// flow's endpoint): false makes the stack answer ICMP port unreachable.
func (e *Engine) decideUDP(id stack.TransportEndpointID) bool {
	dst, port := netipAddr(id.LocalAddress), int(id.LocalPort)
	d, _, name := e.egress("udp", dst, port)
	if !d.Allow {
		e.emit("udp", dst, port, d, name)
		return false
	}
	if !e.flows.acquire() {
		e.emit("udp", dst, port, limited, name)
		return false
	}
	e.emit("udp", dst, port, d, name)
	return true
}

// handleUDPFlow runs (synchronously, after decideUDP took a slot) for an
// allowed flow: a host socket connected to the target, relayed both ways
// until the idle time passes with nothing either way.
func (e *Engine) handleUDPFlow(r *udp.ForwarderRequest) {
	id := r.ID()
	dst, port := netipAddr(id.LocalAddress), int(id.LocalPort)
	_, target, _ := e.egress("udp", dst, port)
	host, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(target, uint16(port))))
	if err != nil {
		e.flows.release()
		return
	}
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
		e.relayUDP(guest, host, e.opts.UDPIdle)
	}()
}

// relayUDP copies datagrams both ways between two connected sockets until
// either fails or idle passes with no datagram either way.
func (e *Engine) relayUDP(a, b net.Conn, idle time.Duration) {
	closeBoth, done := e.pair(a, b)
	defer done()
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
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
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go pipe(a, b)
	go pipe(b, a)
	wg.Wait()
}
