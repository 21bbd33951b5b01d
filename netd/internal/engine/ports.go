package engine

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"krunbox.dev/netd/internal/config"
	"krunbox.dev/netd/internal/policy"
)

// startPorts opens the published ports' host listeners.
func (e *Engine) startPorts() error {
	for i, p := range e.cfg.Ports {
		addr := netip.AddrPortFrom(p.BindIP, uint16(p.Host))
		field := fmt.Sprintf("ports[%d]", i)
		switch p.Protocol {
		case "tcp":
			l, err := listenConfig.Listen(e.ctx, "tcp", addr.String())
			ln, _ := l.(*net.TCPListener)
			if err != nil {
				return &config.Error{Field: field, Message: fmt.Sprintf("cannot listen on %s: %v", addr, err)}
			}
			e.onClose(func() { _ = ln.Close() })
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.servePortTCP(ln, p)
			}()
		case "udp":
			pc, err := listenConfig.ListenPacket(e.ctx, "udp", addr.String())
			uc, _ := pc.(*net.UDPConn)
			if err != nil {
				return &config.Error{Field: field, Message: fmt.Sprintf("cannot listen on %s: %v", addr, err)}
			}
			e.onClose(func() { _ = uc.Close() })
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.servePortUDP(uc, p)
			}()
		}
	}
	return nil
}

func (e *Engine) guestAddr(port int) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpipAddr(e.cfg.GuestIP), Port: uint16(port)}
}

// ingress decides a client of a published port (the client's address is the
// destination, the published host port the port).
func (e *Engine) ingress(proto string, client netip.Addr, p config.Port) bool {
	client = client.Unmap().WithZone("") // fe80::1%eth0 is fe80::1 to the rules
	d := e.pol.Decide(policy.Flow{Direction: policy.Ingress, Protocol: proto, Addr: client, Port: p.Host})
	if d.Allow && !e.flows.acquire() {
		d = limited
	}
	e.emitDir(policy.Ingress, proto, client, p.Host, d, "")
	return d.Allow
}

func (e *Engine) servePortTCP(ln *net.TCPListener, p config.Port) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		client := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		if !e.ingress("tcp", client, p) {
			_ = c.SetLinger(0) // a reset, at once
			_ = c.Close()
			continue
		}
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			defer e.flows.release()
			ctx, cancel := context.WithTimeout(e.ctx, DialTimeout)
			g, ep, err := e.dialGuest(ctx, p.Guest)
			cancel()
			if err != nil {
				_ = c.SetLinger(0)
				_ = c.Close()
				return
			}
			e.splice(guestConn{g, ep}, hostConn{c}, e.leakDir(policy.Ingress, "tcp", client, p.Host, ""))
		}()
	}
}

func (e *Engine) servePortUDP(uc *net.UDPConn, p config.Port) {
	type flow struct {
		g    *gonet.UDPConn
		last time.Time
	}
	var mu sync.Mutex
	flows := map[netip.AddrPort]*flow{}
	buf := make([]byte, 65536)
	for {
		n, from, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		mu.Lock()
		f := flows[from]
		mu.Unlock()
		if f == nil {
			if !e.ingress("udp", from.Addr(), p) {
				continue
			}
			ga := e.guestAddr(p.Guest)
			g, err := gonet.DialUDP(e.stack, nil, &ga, ipv4.ProtocolNumber)
			if err != nil {
				e.flows.release()
				continue
			}
			f = &flow{g: g}
			mu.Lock()
			flows[from] = f
			mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer e.flows.release()
				defer func() {
					mu.Lock()
					delete(flows, from)
					mu.Unlock()
				}()
				untrack := e.track(func() { _ = g.Close() })
				defer untrack()
				defer g.Close()
				rb := make([]byte, 65536)
				for {
					_ = g.SetReadDeadline(time.Now().Add(e.opts.UDPIdle))
					n, err := g.Read(rb)
					if err != nil {
						mu.Lock()
						idle := time.Since(f.last) >= e.opts.UDPIdle
						mu.Unlock()
						if ne, ok := err.(net.Error); ok && ne.Timeout() && !idle {
							continue
						}
						return
					}
					mu.Lock()
					f.last = time.Now()
					mu.Unlock()
					if e.leaks != nil {
						if s := e.leaks.in(rb[:n]); s != nil {
							e.secretBlocked(policy.Ingress, "udp", from.Addr(), p.Host, "", s)
							continue
						}
					}
					if _, err := uc.WriteToUDPAddrPort(rb[:n], from); err != nil {
						return
					}
				}
			}()
		}
		mu.Lock()
		f.last = time.Now()
		mu.Unlock()
		_, _ = f.g.Write(buf[:n])
	}
}

// dialGuest connects to the guest's port from netd's stack, keeping the
// endpoint (to reset it).
func (e *Engine) dialGuest(ctx context.Context, port int) (*gonet.TCPConn, tcpip.Endpoint, error) {
	var wq waiter.Queue
	ep, terr := e.stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, nil, fmt.Errorf("netstack: %s", terr)
	}
	we, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	terr = ep.Connect(e.guestAddr(port))
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ch:
			terr = ep.LastError()
		case <-ctx.Done():
			ep.Close()
			return nil, nil, ctx.Err()
		}
	}
	if terr != nil {
		ep.Close()
		return nil, nil, fmt.Errorf("connecting to the guest: %s", terr)
	}
	return gonet.NewTCPConn(&wq, ep), ep, nil
}
