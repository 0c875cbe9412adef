package admin

import (
	"container/list"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Token guessing is throttled per client: tokens should be long and
// random, but a short one must not be guessable at network speed. After
// MaxWrongTokens wrong tokens from one client within ThrottleWindow, the
// client is refused, whatever it sends, until the window has passed. The
// API and the console share one Throttle, so neither is a way around the
// other's limit. Behind a reverse proxy every client shares the proxy's
// address; the limit then holds for all of them together, which errs on
// the side of refusing.
//
// The table of clients is bounded. When it is full of clients that failed
// within the window, the clients it cannot hold share one more entry,
// overflow, and so one limit: filling the table must not buy unthrottled
// guesses from the next address.
const (
	MaxWrongTokens = 5
	ThrottleWindow = time.Minute
	maxClients     = 10_000
	overflowClient = "overflow"
)

// ErrThrottled is Throttle.Check's answer for a client that must wait.
var ErrThrottled = errors.New("too many wrong tokens from this address")

// Throttle limits the wrong tokens each client may present.
type Throttle struct {
	now func() time.Time
	log *slog.Logger

	mu      sync.Mutex
	clients map[string]*client
	// failed holds the entries with failures, by their latest, oldest
	// first: a full table is pruned from its front, never by reading all
	// of it, so a request from a fresh address costs the same however
	// full the table is.
	failed list.List
}

type client struct {
	key     string        // its key in Throttle.clients
	elem    *list.Element // in Throttle.failed, or nil
	fails   []time.Time   // within the window, oldest first
	pending int           // checks running now
	// freed is closed when a running check ends: checks that could be
	// the one to reach the limit wait for it.
	freed chan struct{}
}

// NewThrottle returns a Throttle on the clock now (nil: time.Now) that
// logs on log (nil: nowhere) when a client starts being refused.
func NewThrottle(now func() time.Time, log *slog.Logger) *Throttle {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Throttle{now: now, log: log, clients: map[string]*client{}}
}

// ClientOf is the throttle's key for a remote address: the IPv4 address,
// or the IPv6 /64, since a host is given a whole /64 and can pick a fresh
// address in it for every guess.
func ClientOf(remoteAddr string) string {
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

// Check runs check, which compares a token the client at remoteAddr
// presented and reports whether it was wrong, unless the client must
// wait: then it returns how long, and an error wrapping ErrThrottled,
// without running check. However many arrive at once, no more than
// MaxWrongTokens checks that turn out wrong run per client within the
// window: a check that could be the one to reach the limit waits for
// those already running, so right tokens sent at once are never refused
// for each other. It returns ctx's error if ctx ends while it waits.
func (t *Throttle) Check(ctx context.Context, remoteAddr string, check func() (wrong bool)) (time.Duration, error) {
	key := ClientOf(remoteAddr)
	var c *client
	for c == nil {
		t.mu.Lock()
		now := t.now()
		k, cl := t.clientLocked(key, now)
		recent := cl.recent(now)
		switch {
		case len(recent) >= MaxWrongTokens:
			t.mu.Unlock()
			return recent[0].Add(ThrottleWindow).Sub(now), ErrThrottled
		case len(recent)+cl.pending < MaxWrongTokens:
			cl.pending++
			key, c = k, cl
			t.mu.Unlock()
		default:
			if cl.freed == nil {
				cl.freed = make(chan struct{})
			}
			freed := cl.freed
			t.mu.Unlock()
			select {
			case <-freed:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
	}
	wrong := true // a check that panics counts as wrong
	defer func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		now := t.now()
		c.pending--
		c.recent(now)
		if wrong {
			fs := append(c.fails, now)
			c.fails = fs[max(0, len(fs)-MaxWrongTokens):]
			if c.elem != nil {
				t.failed.MoveToBack(c.elem)
			} else {
				c.elem = t.failed.PushBack(c)
			}
			if len(c.fails) == MaxWrongTokens {
				t.log.LogAttrs(context.Background(), slog.LevelWarn, "admin: refusing tokens from a client after too many wrong ones",
					slog.String("client", key), slog.Int("wrong", MaxWrongTokens), slog.Duration("within", ThrottleWindow))
			}
		}
		if c.freed != nil {
			close(c.freed)
			c.freed = nil
		}
		if c.pending == 0 && len(c.fails) == 0 {
			t.forgetLocked(c)
		}
	}()
	wrong = check()
	return 0, nil
}

// clientLocked returns the entry key is counted under: its own, or the
// overflow's when the table is full of live entries.
func (t *Throttle) clientLocked(key string, now time.Time) (string, *client) {
	if c := t.clients[key]; c != nil {
		return key, c
	}
	if len(t.clients) >= maxClients {
		// Entries whose latest failure has left the window go; one with
		// a check running goes when that check ends.
		for e := t.failed.Front(); e != nil; e = t.failed.Front() {
			c := e.Value.(*client)
			if len(c.recent(now)) > 0 {
				break
			}
			t.failed.Remove(e)
			c.elem = nil
			if c.pending == 0 {
				t.forgetLocked(c)
			}
		}
	}
	if len(t.clients) >= maxClients {
		key = overflowClient
		if c := t.clients[key]; c != nil {
			return key, c
		}
	}
	c := &client{key: key}
	t.clients[key] = c
	return key, c
}

// forgetLocked removes c from the table.
func (t *Throttle) forgetLocked(c *client) {
	if c.elem != nil {
		t.failed.Remove(c.elem)
		c.elem = nil
	}
	if t.clients[c.key] == c {
		delete(t.clients, c.key)
	}
}

// recent drops the failures that left the window and returns the rest.
func (c *client) recent(now time.Time) []time.Time {
	i := 0
	for i < len(c.fails) && now.Sub(c.fails[i]) >= ThrottleWindow {
		i++
	}
	c.fails = c.fails[i:]
	return c.fails
}
