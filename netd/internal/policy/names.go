package policy

import (
	"net/netip"
	"strings"
	"sync"
	"time"
)

// MinTTL is the shortest time a resolved name stays bound to its address,
// MaxTTL the longest (an answer's TTL is clamped to MinTTL..MaxTTL).
const (
	MinTTL = 60 * time.Second
	MaxTTL = 24 * time.Hour
)

// maxNames bounds the table (a guest resolving without end cannot grow it
// past this; the entries closest to expiry go first).
const maxNames = 65536

// Names is the per-sandbox table of names this sandbox resolved through netd:
// address → names, each with an expiry. Domain and suffix rules match a flow
// only through it.
type Names struct {
	mu    sync.Mutex
	now   func() time.Time
	byIP  map[netip.Addr]map[string]time.Time
	count int
}

// NewNames makes an empty table; now may be nil (time.Now).
func NewNames(now func() time.Time) *Names {
	if now == nil {
		now = time.Now
	}
	return &Names{now: now, byIP: map[netip.Addr]map[string]time.Time{}}
}

// Add binds name to addr for ttl (clamped to MinTTL..MaxTTL).
func (t *Names) Add(name string, addr netip.Addr, ttl time.Duration) {
	ttl = min(max(ttl, MinTTL), MaxTTL)
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	addr = addr.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if t.count >= maxNames {
		t.expireLocked(now)
	}
	m := t.byIP[addr]
	if m == nil {
		m = map[string]time.Time{}
		t.byIP[addr] = m
	}
	if _, ok := m[name]; !ok {
		if t.count >= maxNames {
			return
		}
		t.count++
	}
	if exp := now.Add(ttl); exp.After(m[name]) {
		m[name] = exp
	}
}

func (t *Names) expireLocked(now time.Time) {
	for a, m := range t.byIP {
		for n, exp := range m {
			if !exp.After(now) {
				delete(m, n)
				t.count--
			}
		}
		if len(m) == 0 {
			delete(t.byIP, a)
		}
	}
}

// Lookup returns the unexpired names bound to addr.
func (t *Names) Lookup(addr netip.Addr) []string {
	addr = addr.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var out []string
	for n, exp := range t.byIP[addr] {
		if exp.After(now) {
			out = append(out, n)
		}
	}
	return out
}
