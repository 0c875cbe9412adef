package proxy

import (
	"sync"
	"time"
)

// memo keeps recent answers in memory, each until it expires, bounded by
// the bytes its entries are said to take; the oldest entries go first.
// Expired entries are kept (and returned as not fresh) so that they can
// still be served while an upstream is down.
type memo[V any] struct {
	mu    sync.Mutex
	m     map[string]memoEntry[V]
	order []string // insertion order, for eviction
	bytes int
	// max bounds the bytes of all entries; size tells an entry's bytes.
	max  int
	size func(V) int
}

type memoEntry[V any] struct {
	v       V
	expires time.Time
}

func (c *memo[V]) get(key string, now time.Time) (v V, fresh, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	return e.v, ok && now.Before(e.expires), ok
}

func (c *memo[V]) put(key string, v V, expires time.Time) {
	size := len(key) + c.size(v)
	c.mu.Lock()
	defer c.mu.Unlock()
	if size > c.max/8 {
		return // one huge entry must not flush everything else
	}
	if c.m == nil {
		c.m = map[string]memoEntry[V]{}
	}
	if old, ok := c.m[key]; ok {
		c.bytes -= len(key) + c.size(old.v)
	} else {
		c.order = append(c.order, key)
	}
	c.m[key] = memoEntry[V]{v, expires}
	c.bytes += size
	for c.bytes > c.max && len(c.order) > 0 {
		k := c.order[0]
		c.order = c.order[1:]
		if e, ok := c.m[k]; ok {
			c.bytes -= len(k) + c.size(e.v)
			delete(c.m, k)
		}
	}
}

// forget drops key, once what it stood in for is stored.
func (c *memo[V]) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		c.bytes -= len(key) + c.size(e.v)
		delete(c.m, key)
		// Its place in order stays until eviction passes it: put only
		// appends keys it does not hold, so no key is listed twice live.
	}
}
