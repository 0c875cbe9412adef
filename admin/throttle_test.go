package admin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fixedClock is a clock tests move by hand.
type fixedClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fixedClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fixedClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestThrottle() (*Throttle, *fixedClock) {
	clk := &fixedClock{t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	return NewThrottle(clk.now, nil), clk
}

// refused reports whether the throttle refuses the client at addr
// unchecked: it offers a right token, which counts for nothing.
func refused(th *Throttle, addr string) bool {
	_, err := th.Check(context.Background(), addr, func() bool { return false })
	return errors.Is(err, ErrThrottled)
}

// guess runs one check from addr that turns out wrong (or right) and
// reports whether it was checked.
func guess(th *Throttle, addr string, wrong bool) bool {
	_, err := th.Check(context.Background(), addr, func() bool { return wrong })
	return err == nil
}

// TestThrottleLimitsWrongTokens: five wrong tokens within the window, then
// the client is refused, even with the right token, until the window has
// passed; right tokens never count.
func TestThrottleLimitsWrongTokens(t *testing.T) {
	t.Parallel()
	th, clk := newTestThrottle()
	for range 20 {
		if !guess(th, "203.0.113.9:1000", false) {
			t.Fatal("a right token was refused")
		}
	}
	for i := range MaxWrongTokens {
		if !guess(th, "203.0.113.9:1000", true) {
			t.Fatalf("wrong token %d refused; the first %d are checked", i+1, MaxWrongTokens)
		}
	}
	wait, err := th.Check(context.Background(), "203.0.113.9:2000", func() bool {
		t.Error("a blocked client's token was checked")
		return false
	})
	if !errors.Is(err, ErrThrottled) || wait <= 0 || wait > ThrottleWindow {
		t.Fatalf("after %d wrong tokens: wait %v, %v; want ErrThrottled and a wait within the window", MaxWrongTokens, wait, err)
	}
	if blocked := refused(th, "203.0.113.9:1"); !blocked {
		t.Error("a right token from the blocked client is checked")
	}
	if !guess(th, "198.51.100.1:1000", true) {
		t.Error("another client was refused")
	}
	clk.advance(ThrottleWindow)
	if !guess(th, "203.0.113.9:1000", false) {
		t.Error("the client is still refused once the window has passed")
	}
}

// TestThrottleConcurrentGuesses: wrong tokens racing each other are
// checked no more often than MaxWrongTokens, and right tokens sent at once
// from one address, many more than the limit, are all checked: none is
// refused for the others being counted.
func TestThrottleConcurrentGuesses(t *testing.T) {
	t.Parallel()
	th, _ := newTestThrottle()
	var (
		wg      sync.WaitGroup
		checked atomic.Int32
	)
	for range 40 {
		wg.Go(func() {
			th.Check(context.Background(), "203.0.113.9:1", func() bool {
				checked.Add(1)
				time.Sleep(time.Millisecond)
				return true
			})
		})
	}
	wg.Wait()
	if n := checked.Load(); n != MaxWrongTokens {
		t.Fatalf("%d of 40 racing wrong tokens were checked, want %d", n, MaxWrongTokens)
	}

	th2, _ := newTestThrottle()
	for range MaxWrongTokens - 1 {
		guess(th2, "203.0.113.10:1", true)
	}
	var refused atomic.Int32
	for range 50 {
		wg.Go(func() {
			if _, err := th2.Check(context.Background(), "203.0.113.10:1", func() bool {
				time.Sleep(time.Millisecond)
				return false
			}); err != nil {
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	if n := refused.Load(); n != 0 {
		t.Fatalf("%d of 50 right tokens sent at once were refused, one wrong token short of the limit", n)
	}
	if len(th2.clients) != 1 {
		t.Errorf("the table holds %d clients, want the one with failures", len(th2.clients))
	}
}

// TestThrottleWaitEndsWithContext: a check waiting for running ones gives
// up when its request ends.
func TestThrottleWaitEndsWithContext(t *testing.T) {
	t.Parallel()
	th, _ := newTestThrottle()
	for range MaxWrongTokens - 1 {
		guess(th, "203.0.113.9:1", true)
	}
	running, release := make(chan struct{}), make(chan struct{})
	go th.Check(context.Background(), "203.0.113.9:1", func() bool {
		close(running)
		<-release
		return true
	})
	<-running
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := th.Check(ctx, "203.0.113.9:1", func() bool {
		t.Error("a check ran beside the one that may reach the limit")
		return false
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting check: %v, want its context's error", err)
	}
	close(release)
}

// TestThrottleFullTable: an attacker who fills the table with one failure
// from each of many addresses does not win unthrottled guesses from the
// next address: once the table is full, the addresses it cannot hold share
// one limit.
func TestThrottleFullTable(t *testing.T) {
	t.Parallel()
	th, clk := newTestThrottle()
	for i := range maxClients {
		guess(th, fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255), true)
	}
	for i := range MaxWrongTokens {
		guess(th, fmt.Sprintf("192.0.2.%d:1", i), true)
	}
	if blocked := refused(th, "198.51.100.7:1"); !blocked {
		t.Fatal("with the table full, a fresh address guesses without limit")
	}
	if guess(th, "198.51.100.8:1", true) {
		t.Fatal("with the table full, a fresh address's token was checked past the shared limit")
	}
	if n := len(th.clients); n > maxClients+1 {
		t.Fatalf("the table holds %d entries; the bound is %d", n, maxClients)
	}
	// A window later the table has room again and the shared limit lifts.
	clk.advance(ThrottleWindow)
	if !guess(th, "198.51.100.7:1", true) {
		t.Fatal("the shared limit outlived its window")
	}
}

// TestThrottleIPv6Prefix: the addresses of one IPv6 /64 (one host or
// network, as a rule) share a limit; a host choosing a fresh address per
// guess is still throttled.
func TestThrottleIPv6Prefix(t *testing.T) {
	t.Parallel()
	th, _ := newTestThrottle()
	for i := range MaxWrongTokens {
		guess(th, fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1), true)
	}
	if blocked := refused(th, "[2001:db8:1:2:ffff::9]:5000"); !blocked {
		t.Fatal("a fresh address in the same /64 is not throttled")
	}
	if blocked := refused(th, "[2001:db8:1:3::1]:5000"); blocked {
		t.Fatal("another /64 is throttled")
	}
	if blocked := refused(th, "127.0.0.1:5000"); blocked {
		t.Fatal("an IPv4 address is throttled")
	}
}

// TestThrottleFullTableCost: with the table full of clients that failed
// within the window, a token from a fresh address costs about what it
// costs with the table empty, not a pass over the whole table: otherwise
// whoever fills the table makes each later request hold the throttle's
// lock for as long as that pass takes.
func TestThrottleFullTableCost(t *testing.T) {
	t.Parallel()
	const n = 200
	fresh := func(th *Throttle, net int) time.Duration {
		start := time.Now()
		for i := range n {
			guess(th, fmt.Sprintf("%d.0.%d.%d:1", net, i>>8&255, i&255), true)
		}
		return time.Since(start)
	}
	empty, _ := newTestThrottle()
	base := fresh(empty, 11)

	th, clk := newTestThrottle()
	for i := range maxClients {
		guess(th, fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255), true)
	}
	if full := fresh(th, 12); full > 20*base+50*time.Millisecond {
		t.Fatalf("%d tokens from fresh addresses took %v with the table full, %v with it empty", n, full, base)
	}
	if len(th.clients) != maxClients+1 {
		t.Fatalf("the table holds %d entries, want %d and the overflow", len(th.clients), maxClients)
	}
	// Once the failures have left the window, the table makes room again,
	// and forgets what it pruned.
	clk.advance(ThrottleWindow)
	if !guess(th, "198.51.100.7:1", true) {
		t.Fatal("a fresh address was refused a window after the table filled")
	}
	if n := len(th.clients); n != 1 || th.failed.Len() != 1 {
		t.Fatalf("a window later the table holds %d entries (%d with failures), want the one fresh client", n, th.failed.Len())
	}
}
