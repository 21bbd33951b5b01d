package engine

import "sync"

// table counts the guest's concurrent flows (TCP and UDP, both directions)
// against maxConnections, and every flow ever opened.
type table struct {
	mu    sync.Mutex
	max   int
	open  int
	total uint64
}

// acquire takes a slot; false when the table is full.
func (t *table) acquire() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open >= t.max {
		return false
	}
	t.open++
	t.total++
	return true
}

func (t *table) release() {
	t.mu.Lock()
	t.open--
	t.mu.Unlock()
}

func (t *table) counts() (open int, total uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open, t.total
}
