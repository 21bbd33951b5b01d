package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"krunbox.dev/netd/internal/guest"
)

// These tests run netd as a real process (built once into a temp dir), the
// way the runner does: configuration on stdin, JSON lines on stdout.

var netdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "netd-bin")
	if err != nil {
		panic(err)
	}
	netdBin = filepath.Join(dir, "netd")
	if out, err := exec.Command("go", "build", "-o", netdBin, ".").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		panic("go build: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan map[string]any
	done  chan int
}

func startNetd(t *testing.T, config string) *proc {
	t.Helper()
	cmd := exec.Command(netdBin)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: stdin, lines: make(chan map[string]any, 100), done: make(chan int, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.lines <- m
			} else {
				p.lines <- map[string]any{"type": "unparsable", "line": sc.Text()}
			}
		}
		close(p.lines)
		_ = cmd.Wait()
		p.done <- cmd.ProcessState.ExitCode()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	if _, err := io.WriteString(stdin, config+"\n"); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *proc) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case m, ok := <-p.lines:
		if !ok {
			t.Fatal("netd closed stdout")
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no line from netd")
	}
	return nil
}

func (p *proc) exit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case code := <-p.done:
		return code
	case <-time.After(within):
		t.Fatalf("netd still running after %v", within)
	}
	return -1
}

func testConfig(t *testing.T, extra string) (string, string) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "net.sock")
	c := `{"version":1,"socket":"` + sock + `","guest":{"mac":"5a:94:ef:e4:0c:ee","ip":"10.0.2.15","prefix":24},` +
		`"gateway":"10.0.2.2","dnsAddress":"10.0.2.3","hostAddress":"10.0.2.254","policy":{"rules":[],"default":"deny"}` + extra + `}`
	return c, sock
}

func TestBadConfigExits2NamingTheField(t *testing.T) {
	for _, c := range []struct{ line, field string }{
		{`not json`, "config: not JSON"},
		{`{"version":1,"socket":"/tmp/x","guest":{"mac":"zz","ip":"10.0.2.15","prefix":24}}`, "guest.mac"},
		{`{"version":1,"socket":"/tmp/x","extra":true}`, "extra: unknown field"},
		{`{"version":1,"socket":"/tmp/x","guest":{"mac":"5a:94:ef:e4:0c:ee","ip":"10.0.2.15","prefix":24},"gateway":"10.0.2.2","dnsAddress":"10.0.2.3","hostAddress":"10.0.2.254","maxConnections":"many"}`, "maxConnections"},
	} {
		p := startNetd(t, c.line)
		m := p.next(t)
		if m["type"] != "error" || !strings.Contains(m["message"].(string), c.field) {
			t.Errorf("%s: %v", c.line, m)
		}
		if code := p.exit(t, 5*time.Second); code != 2 {
			t.Errorf("%s: exit %d, want 2", c.line, code)
		}
	}
}

// With secrets, the ready line carries the sandbox CA (one PEM certificate,
// a CA) and nothing of the value; a bad secret exits 2 naming its field, not
// its value; without secrets there is no caPem.
func TestSecretsReadyCarriesTheCA(t *testing.T) {
	line, _ := testConfig(t, `,"secrets":[{"env":"K","placeholder":"krunbox-secret-0123456789abcdef","value":"sk-real","hosts":["api.example.com"]}]`)
	p := startNetd(t, line)
	m := p.next(t)
	pemText, _ := m["caPem"].(string)
	if m["type"] != "ready" || strings.Contains(fmt.Sprint(m), "sk-real") {
		t.Fatalf("line: %v", m)
	}
	block, rest := pem.Decode([]byte(pemText))
	if block == nil || strings.TrimSpace(string(rest)) != "" {
		t.Fatalf("caPem is not one PEM block: %q", pemText)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !cert.IsCA {
		t.Fatalf("caPem: %v (CA %v)", err, cert != nil && cert.IsCA)
	}
	bad, _ := testConfig(t, `,"secrets":[{"env":"K","placeholder":"krunbox-secret-0123456789abcdef","value":"sk-real","hosts":[]}]`)
	p = startNetd(t, bad)
	m = p.next(t)
	if msg, _ := m["message"].(string); m["type"] != "error" || !strings.Contains(msg, "secrets[0].hosts") || strings.Contains(msg, "sk-real") {
		t.Fatalf("bad secret: %v", m)
	}
	if code := p.exit(t, 5*time.Second); code != 2 {
		t.Fatalf("exit %d", code)
	}
	plain, _ := testConfig(t, "")
	p = startNetd(t, plain)
	if m := p.next(t); m["type"] != "ready" || m["caPem"] != nil {
		t.Fatalf("without secrets: %v", m)
	}
}

func TestSocketModeReadyStatsAndStdinEOFClosesEverything(t *testing.T) {
	// A host service the guest reaches through hostAddress (host group).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hostSide := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			hostSide <- c
		}
	}()
	line, sock := testConfig(t, `,"policy":{"rules":[{"action":"allow","dest":{"kind":"group","group":"host"},"id":"h"}],"default":"deny"}`)
	line = strings.Replace(line, `,"policy":{"rules":[],"default":"deny"}`, "", 1)
	p := startNetd(t, line)
	if m := p.next(t); m["type"] != "ready" || m["version"] != version {
		t.Fatalf("first line: %v", m)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi.Mode(), err)
	}
	// This test process is netd's parent: SO_PEERCRED accepts it.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	g := newGuest(t, conn)
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := g.dial("10.0.2.254", port)
	if err != nil {
		t.Fatalf("guest dial: %v", err)
	}
	defer c.Close()
	var hc net.Conn
	select {
	case hc = <-hostSide:
	case <-time.After(5 * time.Second):
		t.Fatal("the host service never saw the flow")
	}
	defer hc.Close()
	// A second peer is not accepted (exactly one).
	if c2, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c2.Close()
		t.Fatal("a second peer connected")
	}
	_, _ = io.WriteString(p.stdin, `{"cmd":"stats"}`+"\n")
	m := p.next(t)
	for m["type"] == "event" {
		m = p.next(t)
	}
	if _, ok := m["eventsDropped"].(float64); !ok {
		t.Fatalf("stats without eventsDropped: %v", m)
	}
	if m["type"] != "stats" || m["connections"].(float64) != 1 || m["txBytes"].(float64) == 0 || m["rxBytes"].(float64) == 0 {
		t.Fatalf("stats: %v", m)
	}
	// The runner goes (EOF on stdin): netd closes every flow and exits 0.
	_ = p.stdin.Close()
	if code := p.exit(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d after stdin EOF", code)
	}
	_ = hc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := hc.Read(make([]byte, 1)); err == nil {
		t.Fatal("the host side of the flow is still open after netd exited")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the host side of the flow never closed")
	}
	if _, err := os.Stat(sock); err == nil {
		t.Fatal("the socket outlived netd")
	}
}

// newGuest is a guest stack on conn, as the agent configures one.
func newGuest(t *testing.T, conn net.Conn) *testGuest {
	g, err := guest.New(conn, mustMAC("5a:94:ef:e4:0c:ee"), netip.MustParsePrefix("10.0.2.15/24"), netip.MustParseAddr("10.0.2.2"), 1500)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return &testGuest{g}
}

type testGuest struct{ *guest.Guest }

func (g *testGuest) dial(a string, port int) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return g.DialTCP(ctx, a, port)
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestAPeerThatIsNotTheVMMIsRefused(t *testing.T) {
	line, sock := testConfig(t, "")
	p := startNetd(t, line)
	if m := p.next(t); m["type"] != "ready" {
		t.Fatalf("first line: %v", m)
	}
	// A grandchild whose parent has exited is neither netd's parent nor a
	// child of it: it connects, netd refuses it and says so.
	sh := exec.Command("/bin/sh", "-c", `(python3 -c 'import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(2)' "$0" &) ; exit 0`, sock)
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	if err := sh.Run(); err != nil {
		t.Fatal(err)
	}
	m := p.next(t)
	if m["type"] != "error" || !strings.Contains(m["message"].(string), "refused a peer") {
		t.Fatalf("line: %v", m)
	}
	// The right peer still gets in afterwards.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the VMM could not connect after a refused peer: %v", err)
	}
	conn.Close()
	if code := p.exit(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d after the peer left", code)
	}
}

func TestShutdownCommandAndUnknownCommands(t *testing.T) {
	line, sock := testConfig(t, "")
	p := startNetd(t, line)
	if m := p.next(t); m["type"] != "ready" {
		t.Fatalf("first line: %v", m)
	}
	_, _ = io.WriteString(p.stdin, `{"cmd":"dance"}`+"\n")
	if m := p.next(t); m["type"] != "error" || !strings.Contains(m["message"].(string), "unknown command") {
		t.Fatalf("unknown command: %v", m)
	}
	_, _ = io.WriteString(p.stdin, `{"cmd":"shutdown"}`+"\n")
	if code := p.exit(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d after shutdown", code)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Fatal("the socket outlived netd")
	}
}

func TestVersionFlag(t *testing.T) {
	out, err := exec.Command(netdBin, "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "netd "+version {
		t.Fatalf("%q %v", out, err)
	}
}
