package postgres

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// silence remembers that PostgreSQL stopped answering: once one write or
// shared read has run out of its bound with nothing heard since, the ones
// that follow within the bound fail at once with metadata.ErrUnavailable
// instead of each waiting it out. A burst of cold pulls would otherwise
// queue behind one another (the gate writes one image state at a time),
// the last waiting the bound once per pull before it. After the bound one
// operation at a time is let through to try again. Anything heard from
// the database (an operation that answers, the listener's heartbeat,
// every few seconds) ends the silence at once. An operation that runs out
// while the database answered something else meanwhile (a write waiting
// on a row lock, one slow commit on a loaded disk, the listener's
// heartbeat heard all along) is slow, not a sign of silence, and starts
// none.
type silence struct {
	window time.Duration
	log    *slog.Logger

	mu sync.Mutex
	// since is when the last operation ran out with nothing heard since;
	// zero while the database answers.
	since time.Time
	// probing is set while the one operation let through after the
	// window runs.
	probing bool
	// heard is when the database last answered.
	heard time.Time
}

// check returns an error wrapping metadata.ErrUnavailable while the
// database is silent, or nil, letting the operation run. probe says the
// operation is the one let through to try again, which must report how it
// went (timedOut or answered).
func (q *silence) check(now time.Time) (probe bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.since.IsZero():
		return false, nil
	case now.Sub(q.since) >= q.window && !q.probing:
		q.probing = true
		return true, nil
	}
	return false, fmt.Errorf("metadata: PostgreSQL has not answered since %s (an operation ran out of its %v); not asking again until one does (%w)",
		q.since.UTC().Format(time.RFC3339), q.window, metadata.ErrUnavailable)
}

// timedOut records an operation, started at start, that ran out of its
// bound unanswered. If the database answered anything since start, it is
// not silent, only slow for that operation, and nothing changes.
func (q *silence) timedOut(start, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.heard.After(start) {
		return
	}
	if q.since.IsZero() {
		q.log.Warn("metadata: PostgreSQL did not answer within the operation bound; writes and uncached reads fail at once until it answers",
			slog.Duration("bound", q.window))
	}
	q.since = now
	q.probing = false
}

// answered records that the database answered.
func (q *silence) answered() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.since.IsZero() {
		q.log.Info("metadata: PostgreSQL answers again")
	}
	q.since = time.Time{}
	q.probing = false
	q.heard = time.Now()
}

// ended records that an operation let through by check as a probe ended
// without saying either way (its caller gave up): another may try.
func (q *silence) ended() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.probing = false
}
