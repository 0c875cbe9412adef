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
	what string // what the line let through at last said
	held int    // lines held back since last
}

// NewLogEvery returns a LogEvery that lets a kind through once per every,
// on the clock now (nil: time.Now).
func NewLogEvery(every time.Duration, now func() time.Time) *LogEvery {
	if now == nil {
		now = time.Now
	}
	return &LogEvery{every: every, now: now, kinds: map[string]*logKind{}}
}

// Allow reports whether a line of kind saying what may be logged now, and
// how many lines of that kind were held back since the last one let
// through. A line whose what differs from the last one's is a new problem
// and always goes through. kind must come from a fixed set, never from a
// request; what may say what airlock's own state is (the error of an
// unusable token file), never what a request sent.
func (l *LogEvery) Allow(kind, what string) (ok bool, held int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.kinds[kind]
	if k == nil {
		l.kinds[kind] = &logKind{last: now, what: what}
		return true, 0
	}
	if now.Sub(k.last) < l.every && what == k.what {
		k.held++
		return false, 0
	}
	held = k.held
	k.last, k.what, k.held = now, what, 0
	return true, held
}
