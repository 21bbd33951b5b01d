package engine

import (
	"context"
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Output writes netd's stdout lines (one JSON object a line). Writes go
// through a bounded queue drained by one goroutine, so a runner slow to read
// never stalls the network stack; lines that do not fit are counted in
// Dropped.
type Output struct {
	q       chan []byte
	done    chan struct{}
	mu      sync.Mutex
	dropped uint64
	closed  bool
}

// NewOutput starts the writer.
func NewOutput(w io.Writer) *Output {
	o := &Output{q: make(chan []byte, 4096), done: make(chan struct{})}
	go func() {
		defer close(o.done)
		for b := range o.q {
			_, _ = w.Write(b)
		}
	}()
	return o
}

// Line queues one object; must reports whether a full queue may drop it
// (false) or the caller waits (true: replies to commands, ready, errors).
// It reports whether the line was queued.
func (o *Output) Line(v any, must bool) (queued bool) {
	b, err := json.Marshal(v)
	if err != nil {
		return false
	}
	b = append(b, '\n')
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return false
	}
	if !must {
		select {
		case o.q <- b:
			queued = true
		default:
			o.dropped++
		}
		o.mu.Unlock()
		return queued
	}
	o.mu.Unlock()
	defer func() { _ = recover() }() // closed meanwhile
	o.q <- b
	return true
}

// Error queues an `error` line.
func (o *Output) Error(message string) {
	o.Line(struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}{"error", message}, true)
}

// Close flushes what is queued and stops the writer.
func (o *Output) Close() {
	o.mu.Lock()
	if !o.closed {
		o.closed = true
		close(o.q)
	}
	o.mu.Unlock()
	<-o.done
}

// Event is one decision, as PROTOCOL.md's `event` line.
type Event struct {
	Type      string `json:"type"`
	Timestamp string `json:"timestamp"`
	Direction string `json:"direction"`
	Protocol  string `json:"protocol"`
	Address   string `json:"address"`
	Port      int    `json:"port"`
	Name      string `json:"name,omitempty"`
	Action    string `json:"action"`
	Rule      string `json:"rule,omitempty"`
	Reason    string `json:"reason"`
	Repeated  int    `json:"repeated,omitempty"`
}

type eventKey struct {
	direction, protocol, address, action, name string
	port                                       int
}

type eventSlot struct {
	last       time.Time
	suppressed int
	pending    Event // the last suppressed event (flushed with the count)
}

// Events rate-limits events per destination: at most one line a second for
// the same direction/protocol/address/port/action (and name, for DNS
// events); the next line carries the count suppressed meanwhile as
// `repeated`, or Sweep (once a second) flushes it. The table holds at most
// maxEventSlots keys: a new key past it is counted in Dropped, never
// inserted, so a guest spraying destinations costs O(1) per event and
// bounded memory.
type Events struct {
	out     *Output
	now     func() time.Time
	mu      sync.Mutex
	slots   map[eventKey]*eventSlot
	dropped uint64
	// Sink, when set, also receives every emitted event (tests).
	Sink func(Event)
}

// NewEvents makes a limiter writing to out.
func NewEvents(out *Output, now func() time.Time) *Events {
	if now == nil {
		now = time.Now
	}
	return &Events{out: out, now: now, slots: map[eventKey]*eventSlot{}}
}

const maxEventSlots = 8192

// eventSweep is how often Run sweeps the table.
const eventSweep = time.Second

func keyOf(ev Event) eventKey {
	k := eventKey{direction: ev.Direction, protocol: ev.Protocol, address: ev.Address, action: ev.Action, port: ev.Port}
	if ev.Reason == "dns" || ev.Reason == "rebinding" {
		k.name = ev.Name // every DNS event has netd's address and port 53: the name tells them apart
	}
	return k
}

// Emit records one decision.
func (e *Events) Emit(ev Event) {
	k := keyOf(ev)
	now := e.now()
	ev.Type = "event"
	ev.Timestamp = now.UTC().Format("2006-01-02T15:04:05.000Z")
	e.mu.Lock()
	s := e.slots[k]
	if s != nil && now.Sub(s.last) < time.Second {
		s.suppressed++
		s.pending = ev
		e.mu.Unlock()
		return
	}
	if s == nil {
		if len(e.slots) >= maxEventSlots {
			e.dropped++
			e.mu.Unlock()
			return
		}
		s = &eventSlot{}
		e.slots[k] = s
	}
	ev.Repeated = s.suppressed
	s.suppressed = 0
	s.pending = Event{}
	s.last = now
	e.mu.Unlock()
	e.write(ev)
}

func (e *Events) write(ev Event) {
	if e.out != nil && !e.out.Line(ev, false) {
		e.mu.Lock()
		e.dropped += uint64(1 + ev.Repeated)
		e.mu.Unlock()
	}
	if e.Sink != nil {
		e.Sink(ev)
	}
}

// Sweep flushes every slot whose last line is a second old or more: one
// line for the events it suppressed meanwhile (the last of them, with
// `repeated` the others), and forgets a slot with nothing pending. all
// flushes every pending count whatever its age (at exit).
func (e *Events) Sweep(all bool) {
	now := e.now()
	var flush []Event
	e.mu.Lock()
	for k, s := range e.slots {
		if !all && now.Sub(s.last) < time.Second {
			continue
		}
		if s.suppressed == 0 {
			delete(e.slots, k)
			continue
		}
		ev := s.pending
		ev.Repeated = s.suppressed - 1
		flush = append(flush, ev)
		s.suppressed = 0
		s.pending = Event{}
		s.last = now
	}
	e.mu.Unlock()
	for _, ev := range flush {
		e.write(ev)
	}
}

// Run sweeps once a second until ctx ends, then flushes what is pending.
func (e *Events) Run(ctx context.Context) {
	t := time.NewTicker(eventSweep)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			e.Sweep(false)
		case <-ctx.Done():
			e.Sweep(true)
			return
		}
	}
}

// Dropped counts events never written: new destinations past the table's
// cap and lines the output queue had no room for (with what they repeated).
func (e *Events) Dropped() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dropped
}
