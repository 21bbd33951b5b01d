package engine

import (
	"io"
	"net"
	"testing"
	"time"

	"krunbox.dev/netd/internal/config"
)

// BenchmarkTCPGuestToHost measures bulk TCP throughput from the guest stack
// through netd (frame socket, netd's netstack, the host dial, the splice) to
// a sink on the host's 127.0.0.1. b.N is in MiB.
func BenchmarkTCPGuestToHost(b *testing.B) {
	benchUpload(b, baseConfig(b, rulesHost, "deny", nil))
}

// BenchmarkTCPGuestToHostScanned is BenchmarkTCPGuestToHost in a sandbox
// with secrets (two), on a port not intercepted: what the guest sends is
// scanned for placeholders on the way (the cost of leaks.go).
func BenchmarkTCPGuestToHostScanned(b *testing.B) {
	benchUpload(b, baseConfig(b, rulesHost, "deny", map[string]any{
		"tls": map[string]any{"ports": []int{443}, "bypass": []string{}},
		"secrets": []any{
			map[string]any{"env": "A", "placeholder": testPlaceholder, "value": testValue, "hosts": []string{"api.test"}},
			map[string]any{"env": "B", "placeholder": testQueryPH, "value": testQueryValue, "hosts": []string{"api.test"}},
		},
	}))
}

func benchUpload(b *testing.B, cfg *config.Config) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	h := start(b, cfg)
	c, err := h.dial("10.0.2.254", ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = "krunbox-secret-0123456789abcdef \n"[i%33] // text with many near-misses
	}
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.CloseWrite()
	select {
	case n := <-got:
		if n != int64(b.N)<<20 {
			b.Fatalf("the sink got %d of %d bytes", n, int64(b.N)<<20)
		}
	case <-time.After(60 * time.Second):
		b.Fatal("the sink never saw EOF")
	}
	b.StopTimer()
	c.Close()
}

// BenchmarkTCPHostToGuest measures a download: a host service on 127.0.0.1
// sends, the guest reads, through netd. b.N is in MiB.
func BenchmarkTCPHostToGuest(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	total := int64(b.N) << 20
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		var n int64
		for n < total {
			w, err := c.Write(buf)
			if err != nil {
				return
			}
			n += int64(w)
		}
	}()
	h := start(b, baseConfig(b, rulesHost, "deny", nil))
	b.SetBytes(1 << 20)
	b.ResetTimer()
	c, err := h.dial("10.0.2.254", ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != total {
		b.Fatalf("read %d of %d: %v", n, total, err)
	}
}

// BenchmarkTCPConnectionSetup measures a guest connection's set-up through
// netd to a host service: SYN, policy decision, host dial, handshake, and one
// echoed byte (so the flow is known to be spliced).
func BenchmarkTCPConnectionSetup(b *testing.B) {
	srv := newEchoServer(b)
	h := start(b, baseConfig(b, rulesHost, "deny", nil))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := h.dial("10.0.2.254", srv.port)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := echoOnce(c, "x"); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		c.Close()
		b.StartTimer()
	}
}

// BenchmarkTCPDenied measures how long a denied connection takes to be
// refused (the RST).
func BenchmarkTCPDenied(b *testing.B) {
	h := start(b, baseConfig(b, rulesPublic, "deny", nil))
	for i := 0; i < b.N; i++ {
		if c, err := h.dial("10.0.2.254", 9); err == nil {
			c.Close()
			b.Fatal("connected")
		}
	}
}

// BenchmarkStreamScanner measures the scan alone (two placeholders, 64 KiB
// reads): the CPU a scanned flow spends per byte beyond an unscanned one, on
// text with a near-miss (the placeholders' common prefix) every 33 bytes and
// on JSON with a `k` every 16.
func BenchmarkStreamScanner(b *testing.B) {
	p := newPlaceholders([]config.Secret{{Env: "A", Placeholder: testPlaceholder}, {Env: "B", Placeholder: testQueryPH}})
	for name, text := range map[string]string{
		"near-misses": "krunbox-secret-0123456789abcdef \n",
		"json":        `{"key": "value", "token": "abc", "kind": "ok"}` + "\n",
	} {
		b.Run(name, func(b *testing.B) {
			s := newStreamScanner(p)
			buf := make([]byte, 64<<10)
			for i := range buf {
				buf[i] = text[i%len(text)]
			}
			b.SetBytes(int64(len(buf)))
			for i := 0; i < b.N; i++ {
				if _, _, hit := s.feed(buf); hit != nil {
					b.Fatal("a placeholder in the bench text")
				}
			}
		})
	}
}
