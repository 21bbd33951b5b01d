package engine

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"krunbox.dev/netd/internal/config"
)

func (e *Engine) installTCP() {
	inFlight := e.cfg.MaxConnections
	if inFlight < 64 {
		inFlight = 64
	}
	fwd := tcp.NewForwarder(e.stack, 0, inFlight, e.handleTCP)
	e.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
}

// handleTCP decides one guest connection (its SYN): a denial or a full table
// is a RST at once; an allowed flow is dialled from the host first (a failed
// dial is a RST too) and only then accepted and spliced.
func (e *Engine) handleTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst, port := netipAddr(id.LocalAddress), int(id.LocalPort)
	d, target, name := e.egress("tcp", dst, port)
	// The event goes out before the guest hears the answer.
	if !d.Allow {
		e.emit("tcp", dst, port, d, name)
		r.Complete(true)
		return
	}
	if !e.flows.acquire() {
		e.emit("tcp", dst, port, limited, name)
		r.Complete(true)
		return
	}
	e.emit("tcp", dst, port, d, name)
	ctx, cancel := context.WithTimeout(e.ctx, DialTimeout)
	conn, err := e.dial(ctx, "tcp", netip.AddrPortFrom(target, uint16(port)))
	cancel()
	host, isTCP := conn.(*net.TCPConn)
	if err == nil && !isTCP {
		_ = conn.Close()
	}
	if err != nil || !isTCP || !e.checkLanded("tcp", dst, port, name, d, host) {
		e.flows.release()
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		e.flows.release()
		r.Complete(true)
		_ = host.Close()
		return
	}
	r.Complete(false)
	guest := guestConn{gonet.NewTCPConn(&wq, ep), ep}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.flows.release()
		if e.intercepts(port) {
			e.intercept(guest, hostConn{host}, dst, port, name)
			return
		}
		e.splice(guest, hostConn{host}, e.leakTo("tcp", dst, port, name))
	}()
}

// halfCloser is a stream whose write side closes alone and that can be
// aborted (closed with a reset).
type halfCloser interface {
	net.Conn
	CloseWrite() error
	Abort()
}

// guestConn is the guest's end of a flow in netd's stack.
type guestConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
}

// Abort resets the guest's connection.
func (g guestConn) Abort() { g.ep.Abort() }

// hostConn is the host's end of a flow.
type hostConn struct{ *net.TCPConn }

// Abort resets the host connection (SO_LINGER 0).
func (h hostConn) Abort() {
	_ = h.SetLinger(0)
	_ = h.Close()
}

// splice copies both ways: an EOF one way is passed on as a half-close the
// same way, a reset (or any error) reading one side resets the other; both
// ends close when both directions are done (or Close runs). With leak (a
// sandbox with secrets), what the guest sends is scanned on the way
// (leaks.go): a placeholder resets both ends before anything of the read
// that completes it goes out, and leak reports it.
func (e *Engine) splice(guest, host halfCloser, leak func(*config.Secret)) {
	closeBoth, done := e.pair(guest, host)
	defer done()
	var wg sync.WaitGroup
	pipe := func(dst, src halfCloser, sc *streamScanner) {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		write := func(b []byte) bool {
			if len(b) == 0 {
				return true
			}
			if _, werr := dst.Write(b); werr != nil {
				src.Abort()
				closeBoth()
				return false
			}
			return true
		}
		// While bytes are held back, a read waits HoldFlush at most.
		deadline := false
		setDeadline := func(on bool) {
			if on {
				_ = src.SetReadDeadline(time.Now().Add(HoldFlush))
			} else if deadline {
				_ = src.SetReadDeadline(time.Time{})
			}
			deadline = on
		}
		for {
			n, rerr := src.Read(buf)
			if n > 0 && sc == nil {
				if !write(buf[:n]) {
					return
				}
			} else if n > 0 {
				pre, body, hit := sc.feed(buf[:n])
				if hit != nil {
					leak(hit)
					dst.Abort()
					src.Abort()
					closeBoth()
					return
				}
				if !write(pre) || !write(body) {
					return
				}
				setDeadline(sc.holding())
			}
			if sc != nil && (rerr == io.EOF || isTimeout(rerr)) {
				if !write(sc.release()) {
					return
				}
				setDeadline(false)
				if rerr != io.EOF {
					continue
				}
			}
			if rerr == io.EOF {
				_ = dst.CloseWrite()
				return
			}
			if rerr != nil {
				dst.Abort()
				closeBoth()
				return
			}
		}
	}
	var sc *streamScanner
	if e.leaks != nil && leak != nil {
		sc = newStreamScanner(e.leaks)
	}
	wg.Add(2)
	go pipe(guest, host, nil)
	go pipe(host, guest, sc)
	wg.Wait()
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
