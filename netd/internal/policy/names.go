package policy

import (
	"container/list"
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
// past this; the binding touched longest ago goes first), maxNamesPerAddr
// the names one address holds (so a lookup costs O(1) however many names a
// guest points at one address; the oldest of them goes first).
const (
	maxNames        = 65536
	maxNamesPerAddr = 32
)

// binding is one name bound to one address until exp.
type binding struct {
	addr netip.Addr
	name string
	exp  time.Time
	seq  uint64
	el   *list.Element
}

// Names is the per-sandbox table of names this sandbox resolved through netd:
// address → names, each with an expiry. Domain and suffix rules match a flow
// only through it. Every operation is O(1): bindings are kept in the order
// they were last added (a list), and the table at its cap evicts the front.
type Names struct {
	mu   sync.Mutex
	now  func() time.Time
	byIP map[netip.Addr]map[string]*binding
	lru  *list.List // of *binding, least recently added first
	seq  uint64
}

// NewNames makes an empty table; now may be nil (time.Now).
func NewNames(now func() time.Time) *Names {
	if now == nil {
		now = time.Now
	}
	return &Names{now: now, byIP: map[netip.Addr]map[string]*binding{}, lru: list.New()}
}

// Add binds name to addr for ttl (clamped to MinTTL..MaxTTL).
func (t *Names) Add(name string, addr netip.Addr, ttl time.Duration) {
	ttl = min(max(ttl, MinTTL), MaxTTL)
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	addr = addr.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	exp := t.now().Add(ttl)
	t.seq++
	m := t.byIP[addr]
	if b := m[name]; b != nil {
		if exp.After(b.exp) {
			b.exp = exp
		}
		b.seq = t.seq
		t.lru.MoveToBack(b.el)
		return
	}
	if len(m) >= maxNamesPerAddr {
		var oldest *binding
		for _, b := range m { // at most maxNamesPerAddr
			if oldest == nil || b.seq < oldest.seq {
				oldest = b
			}
		}
		t.removeLocked(oldest)
	}
	if t.lru.Len() >= maxNames {
		t.removeLocked(t.lru.Front().Value.(*binding))
	}
	m = t.byIP[addr]
	if m == nil {
		m = map[string]*binding{}
		t.byIP[addr] = m
	}
	b := &binding{addr: addr, name: name, exp: exp, seq: t.seq}
	b.el = t.lru.PushBack(b)
	m[name] = b
}

func (t *Names) removeLocked(b *binding) {
	t.lru.Remove(b.el)
	m := t.byIP[b.addr]
	delete(m, b.name)
	if len(m) == 0 {
		delete(t.byIP, b.addr)
	}
}

// Lookup returns the unexpired names bound to addr (expired ones are
// forgotten on the way).
func (t *Names) Lookup(addr netip.Addr) []string {
	addr = addr.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var out []string
	for _, b := range t.byIP[addr] {
		if b.exp.After(now) {
			out = append(out, b.name)
		} else {
			t.removeLocked(b)
		}
	}
	return out
}

// Len is the number of bindings held (expired ones included until seen).
func (t *Names) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.Len()
}
