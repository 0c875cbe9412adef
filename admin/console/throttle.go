package console

import (
	"net"
	"sync"
	"time"
)

// Sign-in throttling: tokens should be long and random, but a short one
// must not be guessable at network speed. After maxFails failed sign-ins
// from one address within failWindow, that address is refused until the
// window has passed. Behind a reverse proxy every client shares the
// proxy's address; the limit then holds for all of them together, which
// errs on the side of refusing.
const (
	maxFails    = 5
	failWindow  = time.Minute
	maxTrackers = 10_000
)

type throttle struct {
	mu    sync.Mutex
	fails map[string][]time.Time
}

func clientOf(remoteAddr string) string {
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return host
	}
	return remoteAddr
}

// blocked reports whether addr must wait, and for how long.
func (t *throttle) blocked(addr string, now time.Time) (time.Duration, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	recent := t.recentLocked(addr, now)
	if len(recent) < maxFails {
		return 0, false
	}
	return recent[0].Add(failWindow).Sub(now), true
}

// failed records a failed sign-in from addr.
func (t *throttle) failed(addr string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
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
	if len(t.fails) >= maxTrackers {
		return // still full of live entries: nothing more to learn
	}
	t.fails[addr] = append(t.recentLocked(addr, now), now)
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
