package proxy

import (
	"strings"
	"sync"
	"time"
)

// memo keeps recent answers in memory, each until it expires, bounded by
// the bytes its entries are said to take; the oldest entries go first.
// Expired entries are kept (and returned as not fresh) so that they can
// still be served while an upstream is down.
type memo[V any] struct {
	mu sync.Mutex
	m  map[string]memoEntry[V]
	// order lists entries oldest first, for eviction. An entry forgotten
	// or replaced leaves a stale place here, told apart by its sequence
	// number; they are swept out once they outnumber the live ones, so
	// order stays within a constant factor of m.
	order []memoPlace
	seq   uint64
	bytes int
	// max bounds the bytes of all entries; size tells an entry's bytes.
	max  int
	size func(V) int
}

type memoEntry[V any] struct {
	v       V
	expires time.Time
	seq     uint64
}

type memoPlace struct {
	key string
	seq uint64
}

func (c *memo[V]) get(key string, now time.Time) (v V, fresh, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	return e.v, ok && now.Before(e.expires), ok
}

func (c *memo[V]) put(key string, v V, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set(key, v, expires)
}

// add puts v for key unless a fresh entry holds it already: the first
// answer stands until it expires or is forgotten.
func (c *memo[V]) add(key string, v V, now, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok && now.Before(e.expires) {
		return
	}
	c.set(key, v, expires)
}

// set puts v for key; c.mu must be held.
func (c *memo[V]) set(key string, v V, expires time.Time) {
	size := len(key) + c.size(v)
	// Whatever was kept for key is no longer the answer.
	c.drop(key)
	if size > c.max/8 {
		return // one huge entry must not flush everything else
	}
	if c.m == nil {
		c.m = map[string]memoEntry[V]{}
	}
	c.seq++
	c.m[key] = memoEntry[V]{v, expires, c.seq}
	c.order = append(c.order, memoPlace{key, c.seq})
	c.bytes += size
	for c.bytes > c.max && len(c.order) > 0 {
		pl := c.order[0]
		c.order = c.order[1:]
		if e, ok := c.m[pl.key]; ok && e.seq == pl.seq {
			c.drop(pl.key)
		}
	}
	c.sweep()
}

// forget drops key, once what it stood in for is stored.
func (c *memo[V]) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(key)
	c.sweep()
}

// forgetPrefix drops every key that starts with prefix.
func (c *memo[V]) forgetPrefix(prefix string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key := range c.m {
		if strings.HasPrefix(key, prefix) {
			c.drop(key)
		}
	}
	c.sweep()
}

// change replaces key's value with change(v) when key is held, keeping
// its expiry and place; change must not alter the value's size.
func (c *memo[V]) change(key string, change func(V) V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		e.v = change(e.v)
		c.m[key] = e
	}
}

// forgetIf drops key when its entry is still the one match recognises,
// not one put since.
func (c *memo[V]) forgetIf(key string, match func(V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok && match(e.v) {
		c.drop(key)
		c.sweep()
	}
}

// drop removes key's entry and its bytes; its place in order goes stale.
func (c *memo[V]) drop(key string) {
	if e, ok := c.m[key]; ok {
		c.bytes -= len(key) + c.size(e.v)
		delete(c.m, key)
	}
}

// sweep removes stale places from order once they are at least half of it:
// amortised constant work per put or forget.
func (c *memo[V]) sweep() {
	if len(c.order) < 32 || len(c.order) < 2*len(c.m) {
		return
	}
	live := make([]memoPlace, 0, 2*len(c.m))
	for _, pl := range c.order {
		if e, ok := c.m[pl.key]; ok && e.seq == pl.seq {
			live = append(live, pl)
		}
	}
	c.order = live
}
