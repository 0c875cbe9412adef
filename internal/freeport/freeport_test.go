package freeport

import (
	"net"
	"strconv"
	"sync"
	"testing"
)

// TestPortsAreDistinct picks many ports from several goroutines and checks
// that none is handed out twice and that each can be bound.
func TestPortsAreDistinct(t *testing.T) {
	const workers, each = 8, 50
	var (
		mu   sync.Mutex
		seen = map[int]bool{}
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				p, err := Port()
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[p] {
					t.Errorf("port %d handed out twice", p)
				}
				seen[p] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != workers*each {
		t.Fatalf("got %d distinct ports, want %d", len(seen), workers*each)
	}
	addr, err := Addr()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("bind the handed-out address %s: %v", addr, err)
	}
	l.Close()
	if _, port, _ := net.SplitHostPort(addr); port == "" || seen[atoi(t, port)] {
		t.Fatalf("Addr returned %s, a port Port already handed out", addr)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
