package engine

import (
	"testing"
)

// Regression tests for the hostile review of the engine (issue 15's
// review): each acts as the guest and checks what reached the host, with a
// positive control in the same run.

// The guest resolving host.krunbox.internal binds nothing: a suffix rule
// covering that name (one config.Parse refuses; forced in here to check the
// engine's own defence) does not open the host's loopback, while a
// dns.hosts name under the same suffix, bound to hostAddress by the
// configuration itself, does.
func TestHostNameNeverGrantsHostLoopbackToASuffixRule(t *testing.T) {
	srv := newEchoServer(t)
	rules := `[{"action":"allow","dest":{"kind":"suffix","suffix":".corp.internal"},"protocols":["tcp"],"id":"allow@.internal:tcp"},
	 {"action":"allow","dest":{"kind":"group","group":"public"},"id":"allow@public"}]`
	cfg := baseConfig(t, rules, "deny", map[string]any{"dns": map[string]any{"hosts": map[string]string{"db.corp.internal": "10.0.2.254"}}})
	cfg.Policy.Rules[0].Dest.Suffix = ".internal" // what config.Parse now refuses
	h := start(t, cfg)
	if got := answers(h.query("10.0.2.3", "udp", "host.krunbox.internal")); len(got) != 1 || got[0] != "10.0.2.254" {
		t.Fatalf("host.krunbox.internal: %v", got)
	}
	refusedFast(t, h, "10.0.2.254", srv.port)
	if srv.count() != 0 {
		t.Fatalf("the host's loopback accepted %d connections through a suffix rule", srv.count())
	}
	// Positive control: the configuration's own binding under that suffix.
	if got := answers(h.query("10.0.2.3", "udp", "db.corp.internal")); len(got) != 1 {
		t.Fatalf("db.corp.internal: %v", got)
	}
	c, err := h.dial("10.0.2.254", srv.port)
	if err != nil {
		t.Fatalf("dns.hosts binding under the suffix: %v", err)
	}
	defer c.Close()
	if got, err := echoOnce(c, "named"); err != nil || got != "named" {
		t.Fatalf("echo: %q %v", got, err)
	}
}
