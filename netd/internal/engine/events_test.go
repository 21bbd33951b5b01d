package engine

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestEventsRateLimitedPerDestination(t *testing.T) {
	var buf bytes.Buffer
	out := NewOutput(&buf)
	now := time.Date(2026, 12, 2, 5, 0, 0, 123e6, time.UTC)
	ev := NewEvents(out, func() time.Time { return now })
	a := Event{Direction: "egress", Protocol: "tcp", Address: "203.0.113.7", Port: 443, Action: "denied", Reason: "default"}
	b := a
	b.Port = 80
	for i := 0; i < 5; i++ {
		ev.Emit(a)
	}
	ev.Emit(b) // another destination is not held back
	now = now.Add(1100 * time.Millisecond)
	ev.Emit(a)
	out.Close()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines: %v", len(lines), lines)
	}
	var first, last map[string]any
	_ = json.Unmarshal([]byte(lines[0]), &first)
	_ = json.Unmarshal([]byte(lines[2]), &last)
	if first["type"] != "event" || first["timestamp"] != "2026-12-02T05:00:00.123Z" || first["repeated"] != nil || first["port"].(float64) != 443 {
		t.Fatalf("first: %v", first)
	}
	if last["repeated"].(float64) != 4 {
		t.Fatalf("last: %v", last)
	}
}

func TestICMPEchoDecided(t *testing.T) {
	h := start(t, baseConfig(t, rulesPublic, "deny", nil))
	// A ping to a public address is not forwarded: dropped with an event.
	if h.ping(t, "203.0.113.7") {
		t.Fatal("an echo reply for an address netd does not forward")
	}
	evs := h.eventsFor("203.0.113.7")
	if len(evs) == 0 || evs[0].Protocol != "icmp" || evs[0].Action != "denied" || evs[0].Rule != RuleICMP {
		t.Fatalf("events: %+v", evs)
	}
	// hostAddress answers only with the host group allowed.
	if h.ping(t, "10.0.2.254") {
		t.Fatal("hostAddress answered a ping under a public-only policy")
	}
	// Positive control: netd's gateway answers.
	if !h.ping(t, "10.0.2.2") {
		t.Fatal("the gateway did not answer a ping")
	}
	h2 := start(t, baseConfig(t, rulesHost, "deny", nil))
	if !h2.ping(t, "10.0.2.254") {
		t.Fatal("hostAddress did not answer with the host group allowed")
	}
}
