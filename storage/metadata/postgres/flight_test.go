package postgres

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFlightsShareOneQuery: concurrent misses of one key under one ticket
// share one query; a reader that took its ticket after the key was
// dropped asks anew rather than take an answer read before the drop; a
// reader whose context ends stops waiting while the others get the answer.
func TestFlightsShareOneQuery(t *testing.T) {
	t.Parallel()
	c, _ := newTestCache(time.Minute)
	var fs flights
	var queries atomic.Int32
	release := make(chan struct{})
	read := func(answer string) func(context.Context) (any, error) {
		return func(ctx context.Context) (any, error) {
			queries.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return answer, nil
		}
	}
	const key = "blob hub/app@sha256:0"
	before := c.ticket(key)
	var wg sync.WaitGroup
	got := make([]any, 10)
	for i := range got {
		wg.Go(func() {
			v, err := fs.share(t.Context(), key, before, read("before the write"))
			if err != nil {
				t.Error(err)
			}
			got[i] = v
		})
	}
	waitQueries := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for queries.Load() < n && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	waitQueries(1)
	// A write drops the key: a read after it must not join the old query.
	c.drop(key)
	after := c.ticket(key)
	late := make(chan any, 1)
	go func() {
		v, _ := fs.share(t.Context(), key, after, read("after the write"))
		late <- v
	}()
	waitQueries(2)
	gone, cancel := context.WithCancel(t.Context())
	left := make(chan error, 1)
	go func() {
		_, err := fs.share(gone, key, after, read("unused"))
		left <- err
	}()
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("a reader whose context ended: %v; want context.Canceled", err)
	}
	close(release)
	wg.Wait()
	for i, v := range got {
		if v != "before the write" {
			t.Errorf("reader %d got %v", i, v)
		}
	}
	if v := <-late; v != "after the write" {
		t.Errorf("the reader after the write got %q; want its own query's answer", v)
	}
	if n := queries.Load(); n != 2 {
		t.Errorf("%d queries for 12 readers under two tickets; want 2", n)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if len(fs.m) != 0 {
		t.Errorf("%d queries still recorded after all ended", len(fs.m))
	}
}
