package engine

import (
	"io"
	"sync"
)

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

// pair ties the two ends of one flow together: closeBoth closes both (once);
// Close runs it too while the flow lives; done closes both and forgets them.
func (e *Engine) pair(a, b io.Closer) (closeBoth func(), done func()) {
	var once sync.Once
	closeBoth = func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
		})
	}
	untrack := e.track(closeBoth)
	return closeBoth, func() {
		closeBoth()
		untrack()
	}
}
