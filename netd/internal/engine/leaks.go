package engine

import (
	"bytes"
	"net/netip"
	"strings"
	"time"

	"krunbox.dev/netd/internal/config"
	"krunbox.dev/netd/internal/policy"
)

// HoldFlush is how long netd holds back the trailing bytes of a guest's
// stream that could begin a placeholder (waiting for the next read to say
// whether they do) before it sends them anyway.
const HoldFlush = 200 * time.Millisecond

// placeholders are a sandbox's placeholders as bytes, for scanning flows
// that are not intercepted (nil without secrets: nothing is scanned).
type placeholders struct {
	secrets []*config.Secret
	raw     [][]byte
	lower   []string // for DNS names (case-insensitive)
	max     int      // the longest placeholder's length
	// common is the placeholders' common prefix (krunbox-secret-) when
	// there are several: one search for it, then a check of each, costs the
	// same for any number of secrets.
	common []byte
}

func newPlaceholders(secrets []config.Secret) *placeholders {
	if len(secrets) == 0 {
		return nil
	}
	p := &placeholders{}
	for i := range secrets {
		s := &secrets[i]
		p.secrets = append(p.secrets, s)
		p.raw = append(p.raw, []byte(s.Placeholder))
		p.lower = append(p.lower, strings.ToLower(s.Placeholder))
		p.max = max(p.max, len(s.Placeholder))
	}
	common := p.raw[0]
	for _, ph := range p.raw[1:] {
		n := 0
		for n < len(common) && n < len(ph) && common[n] == ph[n] {
			n++
		}
		common = common[:n]
	}
	if len(p.raw) > 1 && len(common) >= 8 {
		p.common = common
	}
	return p
}

// in returns the secret whose placeholder b holds (nil: none).
func (p *placeholders) in(b []byte) *config.Secret {
	if p.common == nil {
		for i, ph := range p.raw {
			if bytes.Contains(b, ph) {
				return p.secrets[i]
			}
		}
		return nil
	}
	for off := 0; ; off++ {
		j := bytes.Index(b[off:], p.common)
		if j < 0 {
			return nil
		}
		off += j
		for i, ph := range p.raw {
			if bytes.HasPrefix(b[off:], ph) {
				return p.secrets[i]
			}
		}
	}
}

// inName returns the secret whose placeholder a (normalised, lower-case)
// DNS name holds, as is or with its dots removed (a placeholder split
// across labels).
func (p *placeholders) inName(name string) *config.Secret {
	joined := strings.ReplaceAll(name, ".", "")
	for i, ph := range p.lower {
		if strings.Contains(name, ph) || strings.Contains(joined, ph) {
			return p.secrets[i]
		}
	}
	return nil
}

// heldLen is the length of the longest suffix of b that is a proper prefix
// of some placeholder (bytes that a placeholder may be completed after).
func (p *placeholders) heldLen(b []byte) int {
	best := 0
	for _, ph := range p.raw {
		from := max(len(b)-(len(ph)-1), 0)
		for i := from; i < len(b)-best; i++ {
			j := bytes.IndexByte(b[i:len(b)-best], ph[0])
			if j < 0 {
				break
			}
			i += j
			if bytes.HasPrefix(ph, b[i:]) {
				best = len(b) - i
				break
			}
		}
	}
	return best
}

// streamScanner finds placeholders in one direction of a TCP stream read in
// pieces. It keeps the stream's last max−1 bytes, so a placeholder split
// across reads is found when its last piece comes, and holds back (does not
// hand out to be sent) a trailing piece that could begin a placeholder, so
// that no byte of a split placeholder is sent either, until the next read
// (or HoldFlush) decides.
type streamScanner struct {
	p    *placeholders
	tail []byte // the stream's last (at most) max−1 bytes
	held int    // how many of tail's last bytes are not sent yet
	join []byte // scratch: tail and the head of a read
	pre  []byte // scratch: held bytes being released
}

func newStreamScanner(p *placeholders) *streamScanner {
	return &streamScanner{p: p, tail: make([]byte, 0, p.max), join: make([]byte, 0, 2*p.max), pre: make([]byte, 0, p.max)}
}

// feed scans the next read b. Without a placeholder it returns what may be
// sent now, in order: pre (bytes held back before) then body (a prefix of
// b); it keeps holding a trailing piece that could begin a placeholder.
// With one, hit is its secret and nothing is to be sent.
func (s *streamScanner) feed(b []byte) (pre, body []byte, hit *config.Secret) {
	if len(s.tail) > 0 {
		s.join = append(append(s.join[:0], s.tail...), b[:min(len(b), s.p.max-1)]...)
		if hit = s.p.in(s.join); hit != nil {
			return nil, nil, hit
		}
	}
	if hit = s.p.in(b); hit != nil {
		return nil, nil, hit
	}
	unsent := s.held + len(b)
	// The stream's last max−1 bytes, in join.
	keep := s.p.max - 1
	if len(b) >= keep {
		s.join = append(s.join[:0], b[len(b)-keep:]...)
	} else {
		s.join = append(append(s.join[:0], s.tail[max(len(s.tail)-(keep-len(b)), 0):]...), b...)
	}
	held := min(s.p.heldLen(s.join), unsent)
	old := s.tail[len(s.tail)-s.held:]
	if held <= len(b) {
		pre, body = append(s.pre[:0], old...), b[:len(b)-held]
	} else {
		pre = append(s.pre[:0], old[:unsent-held]...)
	}
	s.tail = append(s.tail[:0], s.join...)
	s.held = held
	return pre, body, nil
}

// holding says whether bytes are held back.
func (s *streamScanner) holding() bool { return s.held > 0 }

// release hands out the held bytes (the stream paused or ended: they are
// sent). The slice is valid until the next feed.
func (s *streamScanner) release() []byte {
	out := s.tail[len(s.tail)-s.held:]
	s.held = 0
	return out
}

// leakTo is what reports a placeholder the guest sent on an egress flow to
// dst:port (nil without secrets: nothing is scanned).
func (e *Engine) leakTo(proto string, dst netip.Addr, port int, name string) func(*config.Secret) {
	return e.leakDir(policy.Egress, proto, dst, port, name)
}

// leakDir is leakTo for either direction (ingress: addr is the client of a
// published port, port the host port).
func (e *Engine) leakDir(dir, proto string, addr netip.Addr, port int, name string) func(*config.Secret) {
	if e.leaks == nil {
		return nil
	}
	return func(s *config.Secret) { e.secretBlocked(dir, proto, addr, port, name, s) }
}

// secretBlocked reports a placeholder found in a flow that is not
// intercepted (or a DNS name): event secret-blocked, rule secret:<env>,
// never the placeholder or the value.
func (e *Engine) secretBlocked(dir, proto string, addr netip.Addr, port int, name string, s *config.Secret) {
	e.Events.Emit(Event{Direction: dir, Protocol: proto, Address: addr.String(), Port: port, Name: name, Action: "secret-blocked", Rule: "secret:" + s.Env, Reason: ReasonSecret})
}
