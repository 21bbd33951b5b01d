package engine

import (
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
func (o *Output) Line(v any, must bool) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	b = append(b, '\n')
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	if !must {
		select {
		case o.q <- b:
		default:
			o.dropped++
		}
		o.mu.Unlock()
		return
	}
	o.mu.Unlock()
	defer func() { _ = recover() }() // closed meanwhile
	o.q <- b
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
	direction, protocol, address, action string
	port                                 int
}

type eventSlot struct {
	last       time.Time
	suppressed int
}

// Events rate-limits events per destination: at most one line a second for
// the same direction/protocol/address/port/action; the next line carries the
// count suppressed meanwhile as `repeated`.
type Events struct {
	out   *Output
	now   func() time.Time
	mu    sync.Mutex
	slots map[eventKey]*eventSlot
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

// Emit records one decision.
func (e *Events) Emit(ev Event) {
	k := eventKey{ev.Direction, ev.Protocol, ev.Address, ev.Action, ev.Port}
	now := e.now()
	e.mu.Lock()
	s := e.slots[k]
	if s != nil && now.Sub(s.last) < time.Second {
		s.suppressed++
		e.mu.Unlock()
		return
	}
	if s == nil {
		if len(e.slots) >= maxEventSlots {
			for key, old := range e.slots {
				if now.Sub(old.last) >= time.Second && old.suppressed == 0 {
					delete(e.slots, key)
				}
			}
		}
		s = &eventSlot{}
		e.slots[k] = s
	}
	ev.Repeated = s.suppressed
	s.suppressed = 0
	s.last = now
	sink := e.Sink
	e.mu.Unlock()
	ev.Type = "event"
	ev.Timestamp = now.UTC().Format("2006-01-02T15:04:05.000Z")
	if e.out != nil {
		e.out.Line(ev, false)
	}
	if sink != nil {
		sink(ev)
	}
}
