package proxy

import (
	"fmt"
	"testing"
	"time"
)

// TestMemoForgetKeepsItsBookkeepingBounded: the memos of writes in flight
// (storing, declaring, tagging) are put once and forgotten once the write
// lands, so their bytes never reach the bound; what they remember for
// eviction must shrink with them, or a long-running proxy grows by one key
// per manifest ever pulled.
func TestMemoForgetKeepsItsBookkeepingBounded(t *testing.T) {
	t.Parallel()
	c := &memo[int64]{max: 1 << 20, size: func(int64) int { return 8 }}
	exp := time.Now().Add(time.Hour)
	for i := range 10000 {
		k := fmt.Sprint("hub/library/app\x00sha256:", i)
		c.put(k, 1, exp)
		c.forget(k)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) != 0 || c.bytes != 0 {
		t.Fatalf("after forgetting every entry: %d entries, %d bytes", len(c.m), c.bytes)
	}
	if len(c.order) > 64 {
		t.Fatalf("after 10000 put-and-forget: %d keys kept for eviction, want a handful", len(c.order))
	}
}

// TestMemoEvictsOldestLiveEntry: a key forgotten and put again is new; the
// eviction pass must not take it for the old entry it replaced.
func TestMemoEvictsOldestLiveEntry(t *testing.T) {
	t.Parallel()
	exp := time.Now().Add(time.Hour)
	// One-byte keys of 19-byte values: eight entries fit.
	c := &memo[int64]{max: 8 * 20, size: func(int64) int { return 19 }}
	c.put("a", 1, exp)
	c.forget("a")
	c.put("b", 2, exp)
	c.put("a", 3, exp) // newer than b
	for _, k := range []string{"c", "d", "e", "f", "g", "h", "i"} {
		c.put(k, 4, exp) // i is one over the bound: b is the oldest live entry
	}
	if _, _, ok := c.get("b", time.Now()); ok {
		t.Error("b, the oldest entry, survived eviction")
	}
	for _, k := range []string{"a", "c", "d", "e", "f", "g", "h", "i"} {
		if _, _, ok := c.get(k, time.Now()); !ok {
			t.Errorf("%s was evicted before the older b", k)
		}
	}
	if c.bytes != 8*20 {
		t.Errorf("bytes = %d, want %d", c.bytes, 8*20)
	}
}

// TestMemoOversizedAnswerReplacesTheOld: an answer too big to keep must not
// leave the previous answer for the key to be served as if it were current.
func TestMemoOversizedAnswerReplacesTheOld(t *testing.T) {
	t.Parallel()
	c := &memo[[]byte]{max: 800, size: func(b []byte) int { return len(b) }}
	exp := time.Now().Add(time.Hour)
	c.put("k", []byte("old"), exp)
	c.put("k", make([]byte, 200), exp)
	if v, _, ok := c.get("k", time.Now()); ok {
		t.Fatalf("after an answer too big to keep, the memo still answers %q", v)
	}
	if c.bytes != 0 {
		t.Fatalf("bytes = %d, want 0", c.bytes)
	}
}

func TestMemoForgetPrefix(t *testing.T) {
	t.Parallel()
	c := memo[int64]{max: 1 << 20, size: func(int64) int { return 8 }}
	exp := time.Now().Add(time.Hour)
	for _, k := range []string{"vendor/a\x00x", "vendor/b\x00y", "vendorx/a\x00x", "hub/library/a\x00x"} {
		c.put(k, 1, exp)
	}
	c.forgetPrefix("vendor/")
	for k, want := range map[string]bool{"vendor/a\x00x": false, "vendor/b\x00y": false, "vendorx/a\x00x": true, "hub/library/a\x00x": true} {
		if _, _, ok := c.get(k, time.Now()); ok != want {
			t.Errorf("%q held = %v after forgetting vendor/, want %v", k, ok, want)
		}
	}
	if want := (len("vendorx/a\x00x") + 8) + (len("hub/library/a\x00x") + 8); c.bytes != want {
		t.Errorf("bytes = %d after forgetting, want %d", c.bytes, want)
	}
}
