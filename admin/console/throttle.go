package console

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Sign-in throttling: tokens should be long and random, but a short one
// must not be guessable at network speed. After maxFails failed sign-ins
// from one address within failWindow, that address is refused until the
// window has passed. Behind a reverse proxy every client shares the
// proxy's address; the limit then holds for all of them together, which
// errs on the side of refusing.
//
// The table of addresses is bounded. When it is full of addresses that
// failed within the window, the addresses it cannot hold share one more
// entry, overflow, and so one limit: filling the table must not buy
// unthrottled guesses from the next address.
const (
	maxFails    = 5
	failWindow  = time.Minute
	maxTrackers = 10_000
	overflow    = "overflow"
)

type throttle struct {
	mu    sync.Mutex
	fails map[string][]time.Time
}

// clientOf is the throttle's key for a remote address: the IPv4 address,
// or the IPv6 /64, since a host is given a whole /64 and can pick a fresh
// address in it for every guess.
func clientOf(remoteAddr string) string {
	host := remoteAddr
	if h, _, err := net.SplitHostPort(remoteAddr); err == nil {
		host = h
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	addr = addr.Unmap()
	if addr.Is4() {
		return addr.String()
	}
	p, _ := addr.WithZone("").Prefix(64)
	return p.String()
}

// attempt admits one sign-in attempt from addr, or says how long addr must
// wait. An admitted attempt counts as failed at once, and undo takes it back
// when the token was right: checking and counting under one lock holds
// concurrent guesses to the same limit as guesses sent one after another.
// The key it returns is where the attempt was counted, for undo.
func (t *throttle) attempt(addr string, now time.Time) (key string, wait time.Duration, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if wait, blocked := t.blockedLocked(addr, now); blocked {
		return "", wait, false
	}
	return t.failedLocked(addr, now), 0, true
}

// undo takes back the attempt attempt counted under key at the time at.
func (t *throttle) undo(key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fs := t.fails[key]
	for i := len(fs) - 1; i >= 0; i-- {
		if fs[i].Equal(at) {
			fs = append(fs[:i:i], fs[i+1:]...)
			break
		}
	}
	if len(fs) == 0 {
		delete(t.fails, key)
		return
	}
	t.fails[key] = fs
}

// blocked reports whether addr must wait, and for how long.
func (t *throttle) blocked(addr string, now time.Time) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.blockedLocked(addr, now)
}

func (t *throttle) blockedLocked(addr string, now time.Time) (time.Duration, bool) {
	recent := t.recentLocked(addr, now)
	if len(recent) == 0 {
		// Not in the table: perhaps because it was full.
		recent = t.recentLocked(overflow, now)
	}
	if len(recent) < maxFails {
		return 0, false
	}
	return recent[0].Add(failWindow).Sub(now), true
}

// failed records a failed sign-in from addr.
func (t *throttle) failed(addr string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failedLocked(addr, now)
}

// failedLocked records a failure and returns the key it was counted under:
// addr, or overflow when the table is full.
func (t *throttle) failedLocked(addr string, now time.Time) string {
	if t.fails == nil {
		t.fails = map[string][]time.Time{}
	}
	if len(t.fails) >= maxTrackers {
		for a := range t.fails {
			if len(t.recentLocked(a, now)) == 0 {
				delete(t.fails, a)
			}
		}
	}
	if _, tracked := t.fails[addr]; !tracked && len(t.fails) >= maxTrackers {
		addr = overflow // still full of live entries
	}
	fs := append(t.recentLocked(addr, now), now)
	// Only the latest maxFails decide whether addr must wait.
	t.fails[addr] = fs[max(0, len(fs)-maxFails):]
	return addr
}

// recentLocked is addr's failures within the window, oldest first.
func (t *throttle) recentLocked(addr string, now time.Time) []time.Time {
	fs := t.fails[addr]
	i := 0
	for i < len(fs) && now.Sub(fs[i]) >= failWindow {
		i++
	}
	fs = fs[i:]
	if len(fs) == 0 {
		delete(t.fails, addr)
		return nil
	}
	t.fails[addr] = fs
	return fs
}
