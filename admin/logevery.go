package admin

import (
	"sync"
	"time"
)

// LogEvery lets one log line of each kind through per interval. It is for
// refusals that anyone can cause and that no throttle counts: a request
// while admin.tokenFile cannot be used, a sign-in form without its CSRF
// cookie. The first line tells the operator what is wrong; one per request
// would let whoever sends them fill the log.
type LogEvery struct {
	every time.Duration
	now   func() time.Time

	mu sync.Mutex
	// kinds is keyed by the callers' constant kinds, so it stays small.
	kinds map[string]*logKind
}

type logKind struct {
	last time.Time
	held int // lines held back since last
}

// NewLogEvery returns a LogEvery that lets a kind through once per every,
// on the clock now (nil: time.Now).
func NewLogEvery(every time.Duration, now func() time.Time) *LogEvery {
	if now == nil {
		now = time.Now
	}
	return &LogEvery{every: every, now: now, kinds: map[string]*logKind{}}
}

// Allow reports whether a line of kind may be logged now, and how many
// lines of that kind were held back since the last one let through. kind
// must come from a fixed set, never from a request.
func (l *LogEvery) Allow(kind string) (ok bool, held int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.kinds[kind]
	if k == nil {
		l.kinds[kind] = &logKind{last: now}
		return true, 0
	}
	if now.Sub(k.last) < l.every {
		k.held++
		return false, 0
	}
	held = k.held
	k.last, k.held = now, 0
	return true, held
}
