package engine

import (
	"bytes"
	"encoding/json"
	"io"
	"math/rand"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"krunbox.dev/netd/internal/config"
)

// The scanner alone: a stream cut at random places either has a placeholder
// (found, and none of its bytes handed out to be sent) or not (every byte
// handed out, in order, once the stream ends).
func TestStreamScannerFindsSplitPlaceholdersAndHoldsTheirBytes(t *testing.T) {
	p := newPlaceholders([]config.Secret{{Env: "A", Placeholder: testPlaceholder}, {Env: "B", Placeholder: testQueryPH}})
	rng := rand.New(rand.NewSource(1))
	for trial := 0; trial < 2000; trial++ {
		var stream []byte
		for len(stream) < 200 {
			switch rng.Intn(4) {
			case 0:
				stream = append(stream, testPlaceholder[:rng.Intn(len(testPlaceholder))]...) // a proper prefix
			case 1:
				stream = append(stream, 'k')
			default:
				stream = append(stream, "abc\n"[rng.Intn(4)])
			}
		}
		leak := trial%2 == 0
		if leak {
			at := rng.Intn(len(stream))
			stream = append(stream[:at], append([]byte(testPlaceholder), stream[at:]...)...)
		}
		s := newStreamScanner(p)
		var sent []byte
		found := false
		for rest := stream; len(rest) > 0 && !found; {
			n := 1 + rng.Intn(min(len(rest), 60))
			pre, body, hit := s.feed(rest[:n])
			rest = rest[n:]
			if hit != nil {
				found = true
				break
			}
			sent = append(append(sent, pre...), body...)
			if rng.Intn(10) == 0 { // a pause: held bytes go
				sent = append(sent, s.release()...)
			}
		}
		if !found {
			sent = append(sent, s.release()...)
		}
		if leak != found {
			t.Fatalf("trial %d: placeholder in stream %v, found %v", trial, leak, found)
		}
		if !leak && !bytes.Equal(sent, stream) {
			t.Fatalf("trial %d: sent %q, want the stream %q", trial, sent, stream)
		}
		if bytes.Contains(sent, []byte(testPlaceholder)) {
			t.Fatalf("trial %d: the placeholder was handed out", trial)
		}
		if !bytes.HasPrefix(stream, sent) {
			t.Fatalf("trial %d: sent bytes are not a prefix of the stream", trial)
		}
	}
}

// tapServer is a TCP echo server on 127.0.0.1 that records what each
// connection received (the host's word).
type tapServer struct {
	port int
	mu   sync.Mutex
	got  []*bytes.Buffer
}

func newTapServer(t *testing.T) *tapServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &tapServer{port: ln.Addr().(*net.TCPAddr).Port}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b := &bytes.Buffer{}
			s.mu.Lock()
			s.got = append(s.got, b)
			s.mu.Unlock()
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					s.mu.Lock()
					b.Write(buf[:n])
					s.mu.Unlock()
					if n > 0 {
						_, _ = c.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

// received is what connection i (in accept order) received so far.
func (s *tapServer) received(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i >= len(s.got) {
		return ""
	}
	return s.got[i].String()
}

func (s *tapServer) all() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, b := range s.got {
		out = append(out, b.String())
	}
	return strings.Join(out, "|")
}

// startWithSecret runs an engine with one secret (API_KEY for api.test),
// interception on 443 only, the given rules and DNS upstream.
func startWithSecret(t *testing.T, rules string, extra map[string]any) *harness {
	m := map[string]any{
		"tls":     map[string]any{"ports": []int{443}, "bypass": []string{}},
		"secrets": []any{map[string]any{"env": "API_KEY", "placeholder": testPlaceholder, "value": testValue, "hosts": []string{"api.test"}}},
	}
	for k, v := range extra {
		m[k] = v
	}
	return start(t, baseConfig(t, rules, "deny", m))
}

// blockedEvents are the secret-blocked events; it fails the test if any
// event carries a placeholder or a value.
func (h *harness) blockedEvents(t *testing.T) []Event {
	t.Helper()
	h.mu.Lock()
	evs, _ := json.Marshal(h.events)
	h.mu.Unlock()
	for _, s := range []string{testPlaceholder, testPlaceholder[15:], testValue} {
		if strings.Contains(strings.ToLower(string(evs)), strings.ToLower(s)) {
			t.Fatalf("an event carries a placeholder or value: %s", evs)
		}
	}
	return h.eventsWhere(func(ev Event) bool { return ev.Action == "secret-blocked" })
}

// readsReset reads c until an error: true when it is not a clean EOF and no
// byte of want came back.
func readsReset(c net.Conn, want string) bool {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return err != nil && !isTimeout(err) && !strings.Contains(string(b), want)
}

func TestPlaceholderOnPlainTCPBlocked(t *testing.T) {
	tap := newTapServer(t)
	h := startWithSecret(t, rulesHost, nil)
	half := len(testPlaceholder) / 2

	// Positive control, same flow type: a plain payload is echoed, one
	// ending in bytes that could begin a placeholder too (held back, then
	// sent when nothing follows), and a proper prefix at the end of the
	// stream goes out with the half-close.
	c0, err := h.dial("10.0.2.254", tap.port)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := echoOnce(c0, "plain ok"); err != nil || got != "plain ok" {
		t.Fatalf("plain payload: %q %v", got, err)
	}
	if _, err := c0.Write([]byte(testPlaceholder[:half])); err != nil {
		t.Fatal(err)
	}
	_ = c0.CloseWrite()
	_ = c0.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(c0); err != nil || string(rest) != testPlaceholder[:half] {
		t.Fatalf("a proper prefix before EOF: %q %v", rest, err)
	}
	c0.Close()

	// The placeholder in one write: the flow is reset, the server gets
	// nothing of that write.
	c1, err := h.dial("10.0.2.254", tap.port)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Write([]byte("Authorization: Bearer " + testPlaceholder + "\r\n")); err != nil {
		t.Fatal(err)
	}
	if !readsReset(c1, "Bearer") {
		t.Fatal("one write: the flow was not reset, or bytes came back")
	}
	// Split across two writes: no byte of the placeholder reaches the
	// server, only what came before it.
	c2, err := h.dial("10.0.2.254", tap.port)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Write([]byte("GET /" + testPlaceholder[:half])); err != nil {
		t.Fatal(err)
	}
	_, _ = c2.Write([]byte(testPlaceholder[half:] + " HTTP/1.0\r\n\r\n"))
	if !readsReset(c2, testPlaceholder[:4]) {
		t.Fatal("split write: the flow was not reset, or placeholder bytes came back")
	}
	// Split with a pause longer than HoldFlush: the first half goes (it
	// could have been anything), the placeholder is still found and the
	// rest never sent.
	c3, err := h.dial("10.0.2.254", tap.port)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c3.Write([]byte(testPlaceholder[:half])); err != nil {
		t.Fatal(err)
	}
	time.Sleep(HoldFlush + 200*time.Millisecond)
	_, _ = c3.Write([]byte(testPlaceholder[half:]))
	if !readsReset(c3, testPlaceholder[half:]) {
		t.Fatal("split with a pause: the flow was not reset")
	}
	time.Sleep(100 * time.Millisecond)
	if got := tap.received(0); got != "plain ok"+testPlaceholder[:half] {
		t.Fatalf("control connection: server got %q", got)
	}
	if got := tap.received(1); got != "" {
		t.Fatalf("one write: server got %q, want nothing", got)
	}
	if got := tap.received(2); strings.Contains(got, testPlaceholder[:4]) || (got != "" && got != "GET /") {
		t.Fatalf("split write: server got %q, want at most the bytes before the placeholder", got)
	}
	if got := tap.received(3); strings.Contains(got, testPlaceholder[half:]) {
		t.Fatalf("split with a pause: server got %q", got)
	}
	if strings.Contains(tap.all(), testPlaceholder) {
		t.Fatal("the server received the placeholder")
	}
	evs := h.blockedEvents(t)
	if len(evs) == 0 { // identical events within a second are counted, not repeated
		t.Fatal("no secret-blocked event")
	}
	for _, ev := range evs {
		if ev.Protocol != "tcp" || ev.Address != "10.0.2.254" || ev.Port != tap.port || ev.Rule != "secret:API_KEY" || ev.Reason != ReasonSecret {
			t.Errorf("event: %+v", ev)
		}
	}
}

func TestPlaceholderInUDPDatagramDropped(t *testing.T) {
	u := newUDPEcho(t)
	h := startWithSecret(t, rulesHost, nil)
	c := h.udp("10.0.2.254", u.port)
	buf := make([]byte, 256)
	roundTrip := func(msg string, wantEcho bool) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		wait := 5 * time.Second
		if !wantEcho {
			wait = 300 * time.Millisecond
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		n, err := c.Read(buf)
		if wantEcho && (err != nil || string(buf[:n]) != msg) {
			t.Fatalf("datagram %q: %q %v", msg, buf[:n], err)
		}
		if !wantEcho && err == nil {
			t.Fatalf("a datagram with the placeholder came back: %q", buf[:n])
		}
	}
	roundTrip("plain", true) // positive control
	roundTrip("key="+testPlaceholder, false)
	roundTrip("plain again", true) // the flow lives on
	if n := u.count(); n != 2 {
		t.Fatalf("the server saw %d datagrams, want the 2 plain ones", n)
	}
	if evs := h.blockedEvents(t); len(evs) == 0 || evs[0].Protocol != "udp" || evs[0].Port != u.port || evs[0].Rule != "secret:API_KEY" {
		t.Fatalf("secret-blocked events: %+v", evs)
	}
}

func TestPlaceholderInDNSNameNXDomainNotForwarded(t *testing.T) {
	up := newUpstream(t, map[string][]string{"ok.test.": {"203.0.113.7"}})
	h := startWithSecret(t, rulesPublic, map[string]any{"dns": map[string]any{"upstream": []string{up.addr.String()}}})
	half := len(testPlaceholder) / 2
	names := []string{
		testPlaceholder + ".attacker.test",
		"x." + strings.ToUpper(testPlaceholder) + ".attacker.test",
		testPlaceholder[:half] + "." + testPlaceholder[half:] + ".attacker.test",
	}
	for _, proto := range []string{"udp", "tcp"} {
		for _, n := range names {
			if r := h.query("10.0.2.3", proto, n); r.Rcode != dns.RcodeNameError {
				t.Fatalf("%s over %s: rcode %d, want NXDOMAIN", n, proto, r.Rcode)
			}
		}
	}
	// Positive control: an ordinary name is forwarded and answered.
	if r := h.query("10.0.2.3", "udp", "ok.test"); r.Rcode != dns.RcodeSuccess || strings.Join(answers(r), ",") != "203.0.113.7" {
		t.Fatalf("ok.test: rcode %d %v", r.Rcode, answers(r))
	}
	up.mu.Lock()
	queries := strings.Join(up.queries, " ")
	up.mu.Unlock()
	if !strings.Contains(queries, "ok.test.") || strings.Contains(queries, testPlaceholder[15:half]) {
		t.Fatalf("the upstream saw %q: want ok.test and no placeholder", queries)
	}
	evs := h.blockedEvents(t)
	if len(evs) == 0 {
		t.Fatal("no secret-blocked event")
	}
	for _, ev := range evs {
		if ev.Port != 53 || ev.Name != "" || ev.Rule != "secret:API_KEY" {
			t.Errorf("event: %+v", ev)
		}
	}
}

// Without secrets nothing is scanned: the same bytes pass.
func TestNoSecretsNoScanning(t *testing.T) {
	tap, u := newTapServer(t), newUDPEcho(t)
	h := start(t, baseConfig(t, rulesHost, "deny", nil))
	if h.e.leaks != nil {
		t.Fatal("placeholders to scan for without secrets")
	}
	c, err := h.dial("10.0.2.254", tap.port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := echoOnce(c, "Bearer "+testPlaceholder); err != nil || got != "Bearer "+testPlaceholder {
		t.Fatalf("tcp: %q %v", got, err)
	}
	uc := h.udp("10.0.2.254", u.port)
	if got, err := echoOnce(uc, testPlaceholder); err != nil || got != testPlaceholder {
		t.Fatalf("udp: %q %v", got, err)
	}
}

// A published port's guest side is scanned too: a guest service echoing the
// placeholder to a client is reset (TCP) or its datagram dropped (UDP).
func TestPlaceholderFromAPublishedPortBlocked(t *testing.T) {
	tp, up := freePort(t, "tcp"), freePort(t, "udp")
	ports := []map[string]any{
		{"protocol": "tcp", "bind": "127.0.0.1", "host": tp, "guest": 80},
		{"protocol": "udp", "bind": "127.0.0.1", "host": up, "guest": 80},
	}
	h := startWithSecret(t, rulesPublic, map[string]any{"ports": ports})
	h.guestServers(t)
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", itoa(tp)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := echoOnce(c, "plain"); err != nil || got != "plain" { // positive control
		t.Fatalf("tcp port: %q %v", got, err)
	}
	if _, err := c.Write([]byte(testPlaceholder)); err != nil {
		t.Fatal(err)
	}
	if !readsReset(c, testPlaceholder[:4]) {
		t.Fatal("the guest's echo of the placeholder was not reset")
	}
	uc, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", itoa(up)))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	buf := make([]byte, 128)
	_ = uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _ = uc.Write([]byte("dgram"))
	if n, err := uc.Read(buf); err != nil || string(buf[:n]) != "guest:dgram" { // positive control
		t.Fatalf("udp port: %q %v", buf[:n], err)
	}
	_, _ = uc.Write([]byte(testPlaceholder))
	_ = uc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := uc.Read(buf); err == nil {
		t.Fatalf("the guest's datagram with the placeholder reached the client: %q", buf[:n])
	}
	evs := h.blockedEvents(t)
	if len(evs) < 2 || evs[0].Direction != "ingress" || evs[1].Direction != "ingress" {
		t.Fatalf("secret-blocked events: %+v", evs)
	}
}
