package engine

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"krunbox.dev/netd/internal/mitm"
)

// The secret of these tests: the guest holds only placeholder; value must
// reach api.test's server and nothing else.
const (
	testPlaceholder = "krunbox-secret-00112233445566778899aabbccddeeff"
	testValue       = "sk-test-VALUE-5f1e2d"
	testQueryPH     = "krunbox-secret-ffeeddccbbaa99887766554433221100"
	testQueryValue  = "q-VALUE-91a0"
)

// newTestCA is the upstream servers' CA (what trustCa names): a CA of the
// same kind as netd's, made for the test.
func newTestCA(t *testing.T) *mitm.CA {
	ca, err := mitm.NewCA("upstream test", nil)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func leaf(t *testing.T, ca *mitm.CA, name string) tls.Certificate {
	c, err := ca.Leaf(name)
	if err != nil {
		t.Fatal(err)
	}
	return *c
}

// recorder is a real HTTPS server on 127.0.0.1 that records every request
// it receives (the host's word, not the guest's).
type recorder struct {
	srv   *httptest.Server
	port  int
	mu    sync.Mutex
	reqs  []*http.Request
	conns int
}

func newRecorder(t *testing.T, cert *tls.Certificate, more ...tls.Certificate) *recorder {
	r := &recorder{}
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(strings.NewReader(string(body)))
		r.mu.Lock()
		r.reqs = append(r.reqs, req)
		r.mu.Unlock()
		fmt.Fprintf(w, "ok %s body=%d", req.URL.Path, len(body))
	})
	if cert == nil {
		r.srv = httptest.NewTLSServer(h) // its own cert: netd must refuse it
	} else {
		r.srv = httptest.NewUnstartedServer(h)
		r.srv.TLS = &tls.Config{Certificates: append([]tls.Certificate{*cert}, more...)}
		r.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				r.mu.Lock()
				r.conns++
				r.mu.Unlock()
			}
		}
		r.srv.StartTLS()
	}
	t.Cleanup(r.srv.Close)
	r.port = r.srv.Listener.Addr().(*net.TCPAddr).Port
	return r
}

func (r *recorder) requests() []*http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.reqs...)
}

type secretsHarness struct {
	*harness
	ports map[string]int // name → host port (reached through hostAddress)
	logs  *strings.Builder
	logMu sync.Mutex
}

// startSecrets runs an engine with one header secret for api.test (and
// *.api2.test), one query secret for api.test, trustCa = ca, the given
// servers' ports intercepted and bypass names.
func startSecrets(t *testing.T, ca *mitm.CA, servers map[string]*recorder, bypass []string) *secretsHarness {
	var ports []int
	names := map[string]int{}
	for n, s := range servers {
		ports = append(ports, s.port)
		names[n] = s.port
	}
	cfg := baseConfig(t, rulesHost, "deny", map[string]any{
		"trustCa": []string{ca.PEM()},
		"tls":     map[string]any{"ports": ports, "bypass": bypass},
		"secrets": []any{
			map[string]any{"env": "API_KEY", "placeholder": testPlaceholder, "value": testValue, "hosts": []string{"api.test"}, "patterns": []string{"*.api2.test"}},
			map[string]any{"env": "Q_KEY", "placeholder": testQueryPH, "value": testQueryValue, "hosts": []string{"api.test"}, "inQuery": true},
		},
	})
	sh := &secretsHarness{ports: names, logs: &strings.Builder{}}
	sh.harness = startWith(t, cfg, Options{Log: func(f string, a ...any) {
		sh.logMu.Lock()
		fmt.Fprintf(sh.logs, f+"\n", a...)
		sh.logMu.Unlock()
	}})
	return sh
}

// client is a guest HTTPS client (keep-alive) trusting roots, dialling
// name:port through netd to the host's server for that name.
func (sh *secretsHarness) client(roots *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			return sh.dial("10.0.2.254", sh.ports[host])
		},
	}}
}

func (sh *secretsHarness) netdRoots(t *testing.T) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(sh.e.CAPem())) {
		t.Fatal("no CA in CAPem")
	}
	return p
}

func get(c *http.Client, url string, hdr map[string]string) (int, string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func (sh *secretsHarness) noValueAnywhere(t *testing.T) {
	t.Helper()
	sh.mu.Lock()
	evs, _ := json.Marshal(sh.events)
	sh.mu.Unlock()
	sh.logMu.Lock()
	logs := sh.logs.String()
	sh.logMu.Unlock()
	for _, v := range []string{testValue, testQueryValue} {
		if strings.Contains(string(evs), v) || strings.Contains(logs, v) {
			t.Fatalf("a secret value is in the events or logs")
		}
	}
}

func (sh *secretsHarness) actions(action string) []Event {
	return sh.eventsWhere(func(ev Event) bool { return ev.Action == action })
}

func TestSecretsSubstitutedForTheirHostBlockedElsewhere(t *testing.T) {
	ca := newTestCA(t)
	apiCert, otherCert := leaf(t, ca, "api.test"), leaf(t, ca, "other.test")
	api, other := newRecorder(t, &apiCert), newRecorder(t, &otherCert)
	sh := startSecrets(t, ca, map[string]*recorder{"api.test": api, "other.test": other}, nil)
	c := sh.client(sh.netdRoots(t))
	apiURL := fmt.Sprintf("https://api.test:%d", api.port)
	otherURL := fmt.Sprintf("https://other.test:%d", other.port)

	// Three requests on one connection (keep-alive): a bearer header, Basic
	// credentials, a query with an inQuery secret and one without.
	basic := base64.StdEncoding.EncodeToString([]byte("user:" + testPlaceholder))
	for i, hdr := range []map[string]string{
		{"Authorization": "Bearer " + testPlaceholder},
		{"Authorization": "Basic " + basic},
		{"X-Plain": "nothing secret"},
	} {
		code, body, err := get(c, fmt.Sprintf("%s/r%d?q=%s&p=%s", apiURL, i, testQueryPH, testPlaceholder), hdr)
		if err != nil || code != 200 {
			t.Fatalf("request %d to api.test: %d %q %v", i, code, body, err)
		}
	}
	reqs := api.requests()
	if len(reqs) != 3 || api.conns != 1 {
		t.Fatalf("api.test saw %d requests on %d connections, want 3 on 1", len(reqs), api.conns)
	}
	if got := reqs[0].Header.Get("Authorization"); got != "Bearer "+testValue {
		t.Errorf("api.test bearer header: %q", got)
	}
	if u, p, ok := reqs[1].BasicAuth(); !ok || u != "user" || p != testValue {
		t.Errorf("api.test basic credentials: %q %q %v", u, p, ok)
	}
	for i, r := range reqs {
		if q := r.URL.Query(); q.Get("q") != testQueryValue || q.Get("p") != testPlaceholder {
			t.Errorf("request %d query: %q (inQuery secret substituted, the other not)", i, r.URL.RawQuery)
		}
	}

	// Positive control for other.test: a plain request arrives.
	if code, _, err := get(c, otherURL+"/plain", nil); err != nil || code != 200 {
		t.Fatalf("plain request to other.test: %d %v", code, err)
	}
	// The placeholder to other.test: 403 from netd, other.test sees nothing.
	for _, hdr := range []map[string]string{
		{"Authorization": "Bearer " + testPlaceholder},
		{"Authorization": "Basic " + basic},
		{"X-Any": "x" + testPlaceholder + "y"},
	} {
		code, body, err := get(c, otherURL+"/leak", hdr)
		if err != nil || code != 403 || !strings.Contains(body, "API_KEY") {
			t.Fatalf("placeholder to other.test: %d %q %v, want netd's 403", code, body, err)
		}
	}
	if code, _, err := get(c, otherURL+"/leak?k="+testQueryPH, nil); err != nil || code != 403 {
		t.Fatalf("query placeholder to other.test: %d %v, want 403", code, err)
	}
	for _, r := range other.requests() {
		if r.URL.Path != "/plain" {
			t.Fatalf("other.test received %s", r.URL)
		}
	}
	if n := len(other.requests()); n != 1 {
		t.Fatalf("other.test received %d requests, want only the plain one", n)
	}
	if len(sh.actions("secret-substituted")) == 0 || len(sh.actions("secret-blocked")) == 0 {
		t.Errorf("events: substituted %v, blocked %v", sh.actions("secret-substituted"), sh.actions("secret-blocked"))
	}
	for _, ev := range sh.actions("secret-blocked") {
		if ev.Name != "other.test" || ev.Reason != ReasonSecret || !strings.HasPrefix(ev.Rule, "secret:") {
			t.Errorf("blocked event: %+v", ev)
		}
	}
	sh.noValueAnywhere(t)
}

func TestSecretsHostMustMatchSNI(t *testing.T) {
	ca := newTestCA(t)
	apiCert := leaf(t, ca, "api.test")
	api := newRecorder(t, &apiCert)
	sh := startSecrets(t, ca, map[string]*recorder{"api.test": api}, nil)
	roots := sh.netdRoots(t)
	send := func(host string) string {
		conn, err := sh.dial("10.0.2.254", api.port)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Client(conn, &tls.Config{ServerName: "api.test", RootCAs: roots})
		fmt.Fprintf(tc, "GET /h HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n", host, testPlaceholder)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			return err.Error()
		}
		return resp.Status
	}
	if got := send("api.test"); !strings.HasPrefix(got, "200") {
		t.Fatalf("Host = SNI: %s", got)
	}
	if got := send("evil.test"); !strings.HasPrefix(got, "403") {
		t.Fatalf("Host evil.test under SNI api.test: %s, want 403", got)
	}
	if n := len(api.requests()); n != 1 {
		t.Fatalf("api.test received %d requests, want 1 (the mismatched one blocked)", n)
	}
	if evs := sh.actions("denied"); len(evs) == 0 || evs[len(evs)-1].Rule != RuleHostMismatch {
		t.Errorf("denied events: %+v", evs)
	}
	sh.noValueAnywhere(t)
}

func TestSecretsUpstreamCertificateVerified(t *testing.T) {
	ca := newTestCA(t)
	apiCert := leaf(t, ca, "api.test")
	good := newRecorder(t, &apiCert)
	bad := newRecorder(t, nil) // httptest's own certificate, not under trustCa
	sh := startSecrets(t, ca, map[string]*recorder{"api.test": good, "bad.test": bad}, nil)
	c := sh.client(sh.netdRoots(t))
	if code, _, err := get(c, fmt.Sprintf("https://api.test:%d/ok", good.port), nil); err != nil || code != 200 {
		t.Fatalf("verified upstream: %d %v", code, err)
	}
	sh.ports["api.test"] = bad.port // the name api.test, but a server that cannot prove it
	if code, _, err := get(c, fmt.Sprintf("https://api.test:%d/x", bad.port), map[string]string{"Authorization": "Bearer " + testPlaceholder}); err == nil {
		t.Fatalf("unverified upstream answered %d, want a refused handshake", code)
	}
	if n := len(bad.requests()); n != 0 {
		t.Fatalf("the unverified upstream received %d requests", n)
	}
	if evs := sh.actions("denied"); len(evs) == 0 || evs[len(evs)-1].Rule != RuleTLSUnverified {
		t.Errorf("denied events: %+v", evs)
	}
	sh.noValueAnywhere(t)
}

func TestSecretsBypassPassesThroughUntouched(t *testing.T) {
	ca := newTestCA(t)
	pinnedCert := leaf(t, ca, "pinned.test")
	pinned := newRecorder(t, &pinnedCert)
	sh := startSecrets(t, ca, map[string]*recorder{"pinned.test": pinned}, []string{"pinned.test"})
	// The guest trusts only the server's own CA: a handshake through a
	// netd leaf would fail, so success shows the bytes were not touched.
	own := x509.NewCertPool()
	own.AddCert(ca.Certificate())
	c := sh.client(own)
	code, _, err := get(c, fmt.Sprintf("https://pinned.test:%d/p", pinned.port), map[string]string{"Authorization": "Bearer " + testPlaceholder})
	if err != nil || code != 200 {
		t.Fatalf("bypass host: %d %v", code, err)
	}
	reqs := pinned.requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Authorization") != "Bearer "+testPlaceholder {
		t.Fatalf("bypass host got %d requests, header %q: want the placeholder untouched", len(reqs), reqs[0].Header.Get("Authorization"))
	}
	// Positive control: netd's CA does not verify the pinned server (so
	// the client above really talked to it end to end).
	if _, _, err := get(sh.client(sh.netdRoots(t)), fmt.Sprintf("https://pinned.test:%d/p", pinned.port), nil); err == nil {
		t.Fatal("netd's CA verified a bypassed host's certificate")
	}
	if len(sh.actions("secret-substituted")) != 0 {
		t.Error("a substitution on a bypass host")
	}
	// A bypassed flow is scanned like any flow not intercepted: the
	// placeholder in the clear part of the ClientHello (an ALPN name) resets
	// it before the hello goes out, and the server completes no handshake.
	before := len(pinned.requests())
	conn, err := sh.dial("10.0.2.254", pinned.port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(conn, &tls.Config{ServerName: "pinned.test", RootCAs: own, NextProtos: []string{testPlaceholder, "http/1.1"}})
	if err := tc.Handshake(); err == nil {
		t.Fatal("a ClientHello holding the placeholder reached the bypassed server")
	}
	if n := len(pinned.requests()); n != before {
		t.Fatalf("the bypassed server received %d more requests", n-before)
	}
	if evs := sh.actions("secret-blocked"); len(evs) != 1 || evs[0].Name != "pinned.test" {
		t.Fatalf("secret-blocked events: %+v", evs)
	}
	sh.noValueAnywhere(t)
}

// Without secrets nothing is intercepted: the guest sees the server's own
// certificate, and there is no CA.
func TestNoSecretsNoInterception(t *testing.T) {
	ca := newTestCA(t)
	apiCert := leaf(t, ca, "api.test")
	api := newRecorder(t, &apiCert)
	h := start(t, baseConfig(t, rulesHost, "deny", map[string]any{"tls": map[string]any{"ports": []int{api.port}, "bypass": []string{}}}))
	if h.e.CAPem() != "" {
		t.Fatal("a CA without secrets")
	}
	sh := &secretsHarness{harness: h, ports: map[string]int{"api.test": api.port}}
	own := x509.NewCertPool()
	own.AddCert(ca.Certificate())
	if code, _, err := get(sh.client(own), fmt.Sprintf("https://api.test:%d/", api.port), nil); err != nil || code != 200 {
		t.Fatalf("direct TLS: %d %v", code, err)
	}
}

// A guest cannot make netd hold an endless request head: past
// MaxRequestHead the request is refused (431) and nothing goes upstream.
func TestSecretsRequestHeadBounded(t *testing.T) {
	ca := newTestCA(t)
	apiCert := leaf(t, ca, "api.test")
	api := newRecorder(t, &apiCert)
	sh := startSecrets(t, ca, map[string]*recorder{"api.test": api}, nil)
	conn, err := sh.dial("10.0.2.254", api.port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	tc := tls.Client(conn, &tls.Config{ServerName: "api.test", RootCAs: sh.netdRoots(t)})
	go func() {
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: api.test\r\nX-Big: ")
		chunk := strings.Repeat("a", 64<<10)
		for i := 0; i < (MaxRequestHead>>16)+4; i++ {
			if _, err := io.WriteString(tc, chunk); err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil || resp.StatusCode != 431 {
		t.Fatalf("an endless header: %v %v, want 431", resp, err)
	}
	if n := len(api.requests()); n != 0 {
		t.Fatalf("api.test received %d requests", n)
	}
	// Positive control: an ordinary request on a new connection passes.
	if code, _, err := get(sh.client(sh.netdRoots(t)), fmt.Sprintf("https://api.test:%d/ok", api.port), nil); err != nil || code != 200 {
		t.Fatalf("ordinary request: %d %v", code, err)
	}
}

// An intercepted flow is decided by its SNI name too: a guest cannot reach a
// name the policy denies through an allowed address, even when the server
// there holds a valid certificate for it.
func TestSNINameDecidedByThePolicy(t *testing.T) {
	ca := newTestCA(t)
	apiCert, otherCert, deniedCert := leaf(t, ca, "api.test"), leaf(t, ca, "other.test"), leaf(t, ca, "denied.test")
	srv := newRecorder(t, &apiCert, otherCert, deniedCert) // one server, a valid certificate for every name
	secret := []any{map[string]any{"env": "API_KEY", "placeholder": testPlaceholder, "value": testValue, "hosts": []string{"api.test"}}}
	tlsCfg := map[string]any{"ports": []int{srv.port}, "bypass": []string{}}
	handshake := func(h *harness, sni string) error {
		conn, err := h.dial("10.0.2.254", srv.port)
		if err != nil {
			return err
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		p := x509.NewCertPool()
		p.AppendCertsFromPEM([]byte(h.e.CAPem()))
		tc := tls.Client(conn, &tls.Config{ServerName: sni, RootCAs: p})
		fmt.Fprintf(tc, "GET /%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", sni, sni)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	paths := func() string {
		var out []string
		for _, r := range srv.requests() {
			out = append(out, r.URL.Path)
		}
		return strings.Join(out, ",")
	}

	// An allowlist: api.test (bound to hostAddress by dns.hosts) only.
	allow := `[{"action":"allow","direction":"egress","dest":{"kind":"domain","name":"api.test"},"id":"allow@api.test"}]`
	h := start(t, baseConfig(t, allow, "deny", map[string]any{
		"trustCa": []string{ca.PEM()}, "tls": tlsCfg, "secrets": secret,
		"dns": map[string]any{"hosts": map[string]string{"api.test": "10.0.2.254"}},
	}))
	if r := h.query("10.0.2.3", "udp", "api.test"); len(answers(r)) != 1 {
		t.Fatalf("api.test: %v", answers(r))
	}
	if err := handshake(h, "api.test"); err != nil { // positive control
		t.Fatalf("SNI api.test: %v", err)
	}
	if err := handshake(h, "other.test"); err == nil {
		t.Fatal("SNI other.test through api.test's address passed")
	}
	if got := paths(); got != "/api.test" {
		t.Fatalf("the server received %q, want only /api.test", got)
	}
	evs := h.eventsWhere(func(ev Event) bool { return ev.Action == "denied" && ev.Name == "other.test" })
	if len(evs) != 1 || evs[0].Reason != "default" || evs[0].Address != "10.0.2.254" {
		t.Fatalf("denied events for other.test: %+v", evs)
	}

	// A deny rule for a name before an allow of the address (the host
	// group); and an SNI name holding a placeholder.
	deny := `[{"action":"deny","direction":"egress","dest":{"kind":"domain","name":"denied.test"},"id":"deny@denied.test"},` + rulesHost[1:]
	h2 := start(t, baseConfig(t, deny, "deny", map[string]any{"trustCa": []string{ca.PEM()}, "tls": tlsCfg, "secrets": secret}))
	if err := handshake(h2, "other.test"); err != nil { // positive control
		t.Fatalf("SNI other.test under allow@host: %v", err)
	}
	if err := handshake(h2, "denied.test"); err == nil {
		t.Fatal("SNI denied.test passed")
	}
	if err := handshake(h2, testPlaceholder+".other.test"); err == nil {
		t.Fatal("an SNI name holding the placeholder passed")
	}
	if got := paths(); got != "/api.test,/other.test" {
		t.Fatalf("the server received %q", got)
	}
	evs = h2.eventsWhere(func(ev Event) bool { return ev.Action == "denied" && ev.Name == "denied.test" })
	if len(evs) != 1 || evs[0].Rule != "deny@denied.test" || evs[0].Reason != "rule" {
		t.Fatalf("denied events for denied.test: %+v", evs)
	}
	if evs := h2.blockedEvents(t); len(evs) != 1 || evs[0].Rule != "secret:API_KEY" {
		t.Fatalf("secret-blocked events: %+v", evs)
	}
}
