package pullauth

import (
	"bytes"
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"time"
)

// cacheKey identifies one user and password pair without holding the
// password.
type cacheKey [sha256.Size]byte

// verified remembers credentials that passed a bcrypt comparison, so that
// the many requests of one pull pay for one. It is a bounded LRU whose
// entries also expire.
//
// Keys are HMAC-SHA256 under a key drawn at start, not a plain hash: a
// plain SHA-256 of "user:password" found in a memory dump could be
// brute-forced far faster than the bcrypt hash it stands in for.
//
// An entry records the bcrypt hash it was verified against, and counts
// only while the user's current hash is the same, so a password changed or
// removed in the htpasswd file stops working at the next reload.
type verified struct {
	mac []byte
	ttl time.Duration
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[cacheKey]*list.Element
	lru     list.List // of *entry, most recently used first
}

type entry struct {
	key     cacheKey
	hash    []byte
	expires time.Time
}

func newVerified(max int, ttl time.Duration, now func() time.Time) *verified {
	mac := make([]byte, 32)
	_, _ = rand.Read(mac) // crypto/rand.Read never fails
	return &verified{mac: mac, ttl: ttl, max: max, now: now, entries: map[cacheKey]*list.Element{}}
}

// key derives the cache key of a user and password. Basic credentials
// split at the first colon, so a user name holds none and "user:password"
// is unambiguous.
func (v *verified) key(user, pass string) cacheKey {
	h := hmac.New(sha256.New, v.mac)
	h.Write([]byte(user))
	h.Write([]byte{':'})
	h.Write([]byte(pass))
	var k cacheKey
	h.Sum(k[:0])
	return k
}

// ok reports whether k was verified against hash and has not expired.
func (v *verified) ok(k cacheKey, hash []byte) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	el, found := v.entries[k]
	if !found {
		return false
	}
	e := el.Value.(*entry)
	if !v.now().Before(e.expires) || !bytes.Equal(e.hash, hash) {
		v.lru.Remove(el)
		delete(v.entries, k)
		return false
	}
	v.lru.MoveToFront(el)
	return true
}

// add records that k verified against hash, evicting the least recently
// used entry when full.
func (v *verified) add(k cacheKey, hash []byte) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if el, found := v.entries[k]; found {
		e := el.Value.(*entry)
		e.hash, e.expires = hash, v.now().Add(v.ttl)
		v.lru.MoveToFront(el)
		return
	}
	for v.lru.Len() >= v.max {
		oldest := v.lru.Back()
		v.lru.Remove(oldest)
		delete(v.entries, oldest.Value.(*entry).key)
	}
	v.entries[k] = v.lru.PushFront(&entry{key: k, hash: hash, expires: v.now().Add(v.ttl)})
}

// len reports the number of entries, for tests.
func (v *verified) len() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.lru.Len()
}
