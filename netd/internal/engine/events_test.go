package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// A guest spraying new destinations (each event twice within its second)
// costs O(1) per event: the table stays at its cap, the overflow is counted
// as dropped (reported in stats), nothing is scanned on insert; a sweep
// forgets stale slots, flushing their suppressed counts first.
func TestEventSlotsBoundedAndOverflowCounted(t *testing.T) {
	var buf bytes.Buffer
	out := NewOutput(&buf)
	now := time.Unix(0, 0)
	ev := NewEvents(out, func() time.Time { return now })
	const n = 50000
	t0 := time.Now()
	for i := 0; i < n; i++ {
		e := Event{Direction: "egress", Protocol: "udp", Address: fmt.Sprintf("203.0.%d.%d", i/250, i%250), Port: 9, Action: "denied", Reason: "default"}
		ev.Emit(e)
		ev.Emit(e) // within its second: suppressed, pending
		now = now.Add(time.Microsecond)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Fatalf("%d events took %v", 2*n, took)
	}
	if len(ev.slots) > maxEventSlots {
		t.Fatalf("%d slots (cap %d)", len(ev.slots), maxEventSlots)
	}
	// Over the slots' cap every event is dropped and counted; so is a first
	// line the output queue (4096) had no room for while its writer lagged
	// (a loaded machine), each of those once (no repeats yet).
	out.mu.Lock()
	queueDrops := out.dropped
	out.mu.Unlock()
	if d, want := ev.Dropped(), 2*(n-maxEventSlots)+queueDrops; d != want {
		t.Fatalf("dropped %d, want %d (%d of them by the output queue)", d, want, queueDrops)
	}
	// A second later the sweep flushes each slot's suppressed event and then
	// (next sweep) forgets it: new destinations fit again.
	now = now.Add(1100 * time.Millisecond)
	ev.Sweep(false)
	now = now.Add(1100 * time.Millisecond)
	ev.Sweep(false)
	if len(ev.slots) != 0 {
		t.Fatalf("%d slots after two idle sweeps", len(ev.slots))
	}
	// The flushes may fill the output queue; the new destination's line must find room (the point is its slot).
	for deadline := time.Now().Add(10 * time.Second); len(out.q) > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	ev.Emit(Event{Direction: "egress", Protocol: "udp", Address: "198.51.100.1", Port: 9, Action: "denied", Reason: "default"})
	out.Close()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// maxEventSlots first lines, as many flushes, one new line; the output
	// queue (4096) may have dropped some, and those are counted too.
	written := uint64(len(lines))
	if written+ev.Dropped() < 2*maxEventSlots+1+2*(n-maxEventSlots) || !strings.Contains(lines[len(lines)-1], "198.51.100.1") {
		t.Fatalf("%d lines, %d dropped; last %s", written, ev.Dropped(), lines[len(lines)-1])
	}
}

// DNS denials all have netd's address and port 53: the name is part of
// their rate-limit key (two names, two lines), and a count left pending
// is flushed by the once-a-second sweep rather than waiting for the next
// event of that key.
func TestDNSEventsKeyedByNameAndFlushedBySweep(t *testing.T) {
	var got []Event
	now := time.Unix(0, 0)
	ev := NewEvents(nil, func() time.Time { return now })
	ev.Sink = func(e Event) { got = append(got, e) }
	dnsEv := func(name string) Event {
		return Event{Direction: "egress", Protocol: "udp", Address: "10.0.2.3", Port: 53, Name: name, Action: "denied", Reason: "dns"}
	}
	ev.Emit(dnsEv("a.exfil.test"))
	ev.Emit(dnsEv("b.exfil.test"))
	ev.Emit(dnsEv("b.exfil.test"))
	ev.Emit(dnsEv("b.exfil.test"))
	if len(got) != 2 || got[0].Name != "a.exfil.test" || got[1].Name != "b.exfil.test" {
		t.Fatalf("lines: %+v", got)
	}
	ev.Sweep(false) // within the second: nothing yet
	if len(got) != 2 {
		t.Fatalf("flushed early: %+v", got)
	}
	now = now.Add(1100 * time.Millisecond)
	ev.Sweep(false)
	if len(got) != 3 || got[2].Name != "b.exfil.test" || got[2].Repeated != 1 {
		t.Fatalf("after the sweep: %+v", got)
	}
	// Every event is accounted for: lines + repeated = events.
	total := 0
	for _, e := range got {
		total += 1 + e.Repeated
	}
	if total != 4 {
		t.Fatalf("%d events accounted for, want 4", total)
	}
}
