package engine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"krunbox.dev/netd/internal/config"
	"krunbox.dev/netd/internal/mitm"
	"krunbox.dev/netd/internal/policy"
)

// Engine rule ids of interception refusals (reason "rule"): a flow on an
// intercepted port that is not TLS, has no SNI, or whose upstream
// certificate does not verify for the SNI name is closed; a request whose
// Host disagrees with the SNI name is answered 403 and its connection closed.
const (
	RuleTLSNotTLS     = "netd:tls-not-tls"
	RuleTLSNoSNI      = "netd:tls-no-sni"
	RuleTLSUnverified = "netd:tls-upstream-unverified"
	RuleHostMismatch  = "netd:tls-host-mismatch"
	// ReasonSecret is the reason of secret events.
	ReasonSecret = "secret"
)

const (
	// HelloTimeout bounds the wait for the guest's ClientHello and each TLS
	// handshake.
	HelloTimeout = 10 * time.Second
	// MaxScannedBody is how much of a request body netd holds to substitute
	// (a secret with inBody): a longer body is forwarded unscanned.
	MaxScannedBody = 1 << 20
	// MaxRequestHead bounds a request's line and headers (what netd holds
	// to read them): past it the request is refused.
	MaxRequestHead = 1 << 20
)

var errHeadTooLarge = errors.New("request head too large")

// headLimit is the guest's side of an intercepted connection: while a
// request head is read (start…stop) at most MaxRequestHead bytes come
// through, so a guest cannot make netd hold an endless header.
type headLimit struct {
	r       io.Reader
	reading bool
	n       int
}

func (h *headLimit) start() { h.reading, h.n = true, 0 }
func (h *headLimit) stop()  { h.reading = false }

func (h *headLimit) Read(p []byte) (int, error) {
	if h.reading && h.n >= MaxRequestHead {
		return 0, errHeadTooLarge
	}
	n, err := h.r.Read(p)
	h.n += n
	return n, err
}

// interceptor is the TLS interception of a sandbox with secrets.
type interceptor struct {
	ca      *mitm.CA
	roots   *x509.CertPool
	ports   map[int]bool
	bypass  map[string]bool
	secrets []config.Secret
	inBody  bool // some secret substitutes in bodies
}

func newInterceptor(cfg *config.Config) (*interceptor, error) {
	if len(cfg.Secrets) == 0 {
		return nil, nil
	}
	ca, err := mitm.NewCA(cfg.Hostname, nil)
	if err != nil {
		return nil, fmt.Errorf("making the sandbox's CA: %w", err)
	}
	roots, err := mitm.Roots(cfg.TrustCA)
	if err != nil {
		return nil, &config.Error{Field: "trustCa", Message: err.Error()}
	}
	m := &interceptor{ca: ca, roots: roots, ports: map[int]bool{}, bypass: map[string]bool{}, secrets: cfg.Secrets}
	for _, p := range cfg.TLS.Ports {
		m.ports[p] = true
	}
	for _, b := range cfg.TLS.Bypass {
		m.bypass[b] = true
	}
	for _, s := range cfg.Secrets {
		m.inBody = m.inBody || s.InBody
	}
	return m, nil
}

// CAPem is the sandbox CA's certificate ("" without secrets).
func (e *Engine) CAPem() string {
	if e.mitm == nil {
		return ""
	}
	return e.mitm.ca.PEM()
}

// intercepts says whether a TCP flow to port goes through interception.
func (e *Engine) intercepts(port int) bool { return e.mitm != nil && e.mitm.ports[port] }

func (e *Engine) emitAction(dst netip.Addr, port int, name, action, rule, reason string) {
	e.Events.Emit(Event{Direction: policy.Egress, Protocol: "tcp", Address: dst.String(), Port: port, Name: name, Action: action, Rule: rule, Reason: reason})
}

func (e *Engine) refuse(dst netip.Addr, port int, name, rule string) {
	e.emitAction(dst, port, name, "denied", rule, policy.ReasonRule)
}

// readOnly is a conn that reads from r and writes nowhere (the ClientHello
// peek answers nothing).
type readOnly struct {
	net.Conn
	r io.Reader
}

func (c readOnly) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c readOnly) Write(p []byte) (int, error) { return 0, io.ErrClosedPipe }

// replay is the guest's end of a flow whose first reads return what a peek
// consumed.
type replay struct {
	halfCloser
	r io.Reader
}

func (c *replay) Read(p []byte) (int, error) { return c.r.Read(p) }

var errPeeked = errors.New("peeked")

// peekHello reads the guest's ClientHello and returns its SNI name and the
// bytes it consumed (to be replayed).
func peekHello(c net.Conn) (sni string, raw []byte, ok bool) {
	var buf bytes.Buffer
	seen := false
	_ = c.SetReadDeadline(time.Now().Add(HelloTimeout))
	_ = tls.Server(readOnly{c, io.TeeReader(c, &buf)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			sni, seen = h.ServerName, true
			return nil, errPeeked
		},
	}).Handshake()
	_ = c.SetReadDeadline(time.Time{})
	return strings.ToLower(strings.TrimSuffix(sni, ".")), buf.Bytes(), seen
}

// intercept runs one allowed TCP flow on an intercepted port: an SNI name
// holding a placeholder or one the policy denies is refused; a bypass name
// is spliced untouched (but scanned for placeholders); any other name is
// terminated with a leaf of the sandbox CA once the real upstream has
// verified for that name, and its HTTP/1.1 requests are checked and
// rewritten (secrets.go).
func (e *Engine) intercept(guest guestConn, host hostConn, dst netip.Addr, port int, name string) {
	sni, raw, ok := peekHello(guest)
	leaked := e.leaks.inName(sni) // a sandbox with interception has secrets
	switch {
	case !ok:
		e.refuse(dst, port, name, RuleTLSNotTLS)
	case sni == "":
		e.refuse(dst, port, name, RuleTLSNoSNI)
	case leaked != nil:
		// The SNI name would go upstream in the clear.
		e.secretBlocked(policy.Egress, "tcp", dst, port, name, leaked)
	case !e.sniAllowed(dst, port, sni):
	case e.mitm.bypass[sni]:
		// Spliced from the ClientHello on, scanned like any flow that is
		// not intercepted.
		e.splice(&replay{guest, io.MultiReader(bytes.NewReader(raw), guest)}, host, e.leakTo("tcp", dst, port, sni))
		return
	default:
		e.terminate(guest, host, raw, dst, port, sni)
		return
	}
	guest.Abort()
	host.Abort()
}

// sniAllowed decides the flow again as if its destination had been resolved
// from the SNI name alone: a name the policy denies there (a deny rule for
// it, or an allowlist that does not hold it) refuses the flow, with a denied
// event naming the SNI name and the deciding rule (a guest cannot reach a
// denied name through an allowed address).
func (e *Engine) sniAllowed(dst netip.Addr, port int, sni string) bool {
	d := e.pol.Decide(policy.Flow{Direction: policy.Egress, Protocol: "tcp", Addr: dst, Port: port, Names: []string{sni}})
	if !d.Allow {
		e.emit("tcp", dst, port, d, sni)
	}
	return d.Allow
}

func (e *Engine) terminate(guest guestConn, host hostConn, raw []byte, dst netip.Addr, port int, sni string) {
	_, done := e.pair(guest, host)
	defer done()
	ctx, cancel := context.WithTimeout(e.ctx, HelloTimeout)
	defer cancel()
	up := tls.Client(host, &tls.Config{ServerName: sni, RootCAs: e.mitm.roots, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
	if err := up.HandshakeContext(ctx); err != nil {
		e.opts.Log("tls %s (%s:%d): upstream refused: %v", sni, dst, port, err)
		e.refuse(dst, port, sni, RuleTLSUnverified)
		guest.Abort()
		return
	}
	g := tls.Server(&replay{guest, io.MultiReader(bytes.NewReader(raw), guest)}, &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return e.mitm.ca.Leaf(sni) },
		NextProtos:     []string{"http/1.1"},
		MinVersion:     tls.VersionTLS12,
	})
	if err := g.HandshakeContext(ctx); err != nil {
		e.opts.Log("tls %s (%s:%d): guest handshake: %v", sni, dst, port, err)
		return
	}
	cancel()
	e.proxyHTTP(g, up, dst, port, sni)
}

// proxyHTTP relays one terminated connection: responses are copied as they
// come; requests are read one at a time (keep-alive), checked (the Host must
// be the SNI name; a placeholder to a host its secret does not name blocks
// the request before any of it goes upstream), rewritten and forwarded.
func (e *Engine) proxyHTTP(g, up *tls.Conn, dst netip.Addr, port int, sni string) {
	// The guest's write side closes once: after the upstream's last
	// response, or after netd's own answer to a blocked request; never in
	// between (closing up to block a request may end the copy with a clean
	// EOF: the upstream's close_notify).
	var mu sync.Mutex
	blocking, closed := false, false
	closeGuest := func() {
		if !closed {
			closed = true
			_ = g.CloseWrite()
		}
	}
	responses := make(chan error, 1)
	go func() {
		_, err := io.Copy(g, up)
		mu.Lock()
		if err == nil && !blocking {
			closeGuest()
		}
		mu.Unlock()
		responses <- err
	}()
	block := func(status, why string) {
		mu.Lock()
		blocking = true
		mu.Unlock()
		_ = up.Close() // nothing more goes upstream
		<-responses
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return // the upstream had ended the connection: nothing more can be said
		}
		body := "krunbox: " + why + "\n"
		_, _ = fmt.Fprintf(g, "HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", status, len(body), body)
		closeGuest()
	}
	heads := &headLimit{r: g}
	br := bufio.NewReader(heads)
	upw := bufio.NewWriter(up)
	for {
		heads.start()
		req, err := http.ReadRequest(br)
		heads.stop()
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = up.CloseWrite()
				<-responses
			} else if errors.Is(err, errHeadTooLarge) {
				block("431 Request Header Fields Too Large", "the request head is over 1 MiB")
			} else if !errors.Is(err, net.ErrClosed) {
				block("400 Bad Request", "not an HTTP/1.1 request")
			}
			return
		}
		if requestHost(req.Host) != sni {
			e.refuse(dst, port, sni, RuleHostMismatch)
			block("403 Forbidden", "the request's Host does not match the TLS server name")
			return
		}
		used, blocked, err := e.mitm.rewrite(req, sni)
		if err != nil {
			block("400 Bad Request", "reading the request body failed")
			return
		}
		if blocked != nil {
			e.emitAction(dst, port, sni, "secret-blocked", "secret:"+blocked.Env, ReasonSecret)
			block("403 Forbidden", fmt.Sprintf("blocked: the placeholder of %s may not be sent to %s", blocked.Env, sni))
			return
		}
		for _, s := range used {
			e.emitAction(dst, port, sni, "secret-substituted", "secret:"+s.Env, ReasonSecret)
		}
		if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
			req.Header.Del("Expect") // netd answers it: the body is read before it goes upstream
			_, _ = io.WriteString(g, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		if _, ok := req.Header["User-Agent"]; !ok {
			req.Header["User-Agent"] = []string{""} // Request.Write adds none then
		}
		upgrade := req.Header.Get("Upgrade") != ""
		if err := req.Write(upw); err != nil || upw.Flush() != nil {
			_ = g.Close()
			_ = up.Close()
			<-responses
			return
		}
		if upgrade {
			// A protocol switch (WebSocket): what follows is not HTTP;
			// it is passed on unscanned.
			_, _ = io.Copy(up, br)
			_ = up.CloseWrite()
			<-responses
			return
		}
		if req.Close {
			_ = up.CloseWrite()
			<-responses
			return
		}
	}
}

// requestHost is a Host header's name: lower case, without port or
// trailing dot.
func requestHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.ToLower(strings.TrimSuffix(h, "."))
}
