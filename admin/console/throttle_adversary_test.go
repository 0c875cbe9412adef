package console

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestThrottleFullTable: an attacker who fills the table with one failure
// from each of many addresses does not win unthrottled guesses from the
// next address: once the table is full, the addresses it cannot hold share
// one limit.
func TestThrottleFullTable(t *testing.T) {
	t.Parallel()
	var th throttle
	now := time.Unix(1_800_000_000, 0)
	for i := range maxTrackers {
		th.failed(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now)
	}
	for i := range maxFails {
		th.failed(fmt.Sprintf("192.0.2.%d", i), now)
	}
	if _, blocked := th.blocked("198.51.100.7", now); !blocked {
		t.Fatal("with the table full, a fresh address guesses without limit")
	}
	if n := len(th.fails); n > maxTrackers+1 {
		t.Fatalf("the table holds %d entries; the bound is %d", n, maxTrackers)
	}
	// A minute later the table has room again and the shared limit lifts.
	later := now.Add(failWindow)
	if _, blocked := th.blocked("198.51.100.7", later); blocked {
		t.Fatal("the shared limit outlived its window")
	}
}

// TestThrottleIPv6Prefix: the addresses of one IPv6 /64 (one host or
// network, as a rule) share a limit; a host choosing a fresh address per
// guess is still throttled.
func TestThrottleIPv6Prefix(t *testing.T) {
	t.Parallel()
	var th throttle
	now := time.Unix(1_800_000_000, 0)
	for i := range maxFails {
		th.failed(clientOf(fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1)), now)
	}
	if _, blocked := th.blocked(clientOf("[2001:db8:1:2:ffff::9]:5000"), now); !blocked {
		t.Fatal("another address in the same /64 is not throttled")
	}
	if _, blocked := th.blocked(clientOf("[2001:db8:1:3::1]:5000"), now); blocked {
		t.Fatal("another /64 is throttled")
	}
	if _, blocked := th.blocked(clientOf("127.0.0.1:5000"), now); blocked {
		t.Fatal("an IPv4 address is throttled")
	}
}

// TestThrottleAttemptIsAtomic: attempts racing each other are admitted no
// more often than maxFails, and a right token's attempt is taken back.
func TestThrottleAttemptIsAtomic(t *testing.T) {
	var (
		th       throttle
		now      = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
		wg       sync.WaitGroup
		admitted atomic.Int32
	)
	for range 40 {
		wg.Go(func() {
			if _, _, ok := th.attempt("203.0.113.9", now); ok {
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	if n := admitted.Load(); n != maxFails {
		t.Fatalf("%d of 40 racing attempts were admitted, want %d", n, maxFails)
	}

	// Four wrong tokens and one right one: the right one is taken back, so
	// one more attempt is still admitted.
	var th2 throttle
	for i := range maxFails - 1 {
		if _, _, ok := th2.attempt("203.0.113.10", now.Add(time.Duration(i)*time.Second)); !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	at := now.Add(10 * time.Second)
	key, _, ok := th2.attempt("203.0.113.10", at)
	if !ok {
		t.Fatal("fifth attempt refused")
	}
	th2.undo(key, at)
	if _, blocked := th2.blocked("203.0.113.10", at); blocked {
		t.Fatal("a right token's attempt still counted as a failure")
	}
	if _, _, ok := th2.attempt("203.0.113.10", at); !ok {
		t.Fatal("the attempt after a taken-back one was refused")
	}
	if _, blocked := th2.blocked("203.0.113.10", at); !blocked {
		t.Fatal("five failures within the window did not block")
	}
}
