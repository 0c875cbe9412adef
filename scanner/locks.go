package scanner

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// locks hands claircore (libindex, libvuln's update manager) and the
// re-check their cluster-wide locks: PostgreSQL session advisory locks,
// all held on one connection of their own, as claircore's ctxlock does.
// A lock's context ends when its connection is lost, since the database
// released the lock then.
//
// It replaces ctxlock because ctxlock's reconnect loop has no pause and no
// end: with the database down it retries without waiting, a warning per
// attempt (thousands a second), and once the pool it draws from is closed
// it spins for good, even after Close. Here a lost connection is logged
// once, reconnects back off up to maxReconnectWait, and Close ends the
// loop whatever the database's state.
//
// Keys hash as ctxlock's do (64-bit FNV-1a of the key, as a bigint), so a
// replica still running ctxlock and one running this exclude each other.
type locks struct {
	cfg *pgx.ConnConfig
	log *slog.Logger

	// mu guards the fields below and every use of conn, which pgx does
	// not allow from two goroutines at once. A caller taking a lock waits
	// for it only as long as its context lets it: the keeper may hold it
	// for a ping on a stalled connection, up to lockCallTimeout.
	mu   ctxMutex
	conn *pgx.Conn // nil while disconnected
	// gen counts connections: a lock taken on an earlier one is gone.
	gen uint64
	// held is keyed by the lock's id, not its name: two names with the
	// same id are one lock to the database, which hands a session's own
	// lock to it again.
	held   map[int64]*heldLock
	closed bool

	wake chan struct{} // asks the keeper to check the connection now
	// ctx ends when Close begins; every statement and dial runs under it,
	// so Close need not wait out one stuck on a stalled connection.
	ctx       context.Context
	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// ctxMutex is a mutex whose Lock can give up when a context ends.
type ctxMutex chan struct{}

func (m ctxMutex) Lock() { m <- struct{}{} }

func (m ctxMutex) LockContext(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m ctxMutex) Unlock() { <-m }

type heldLock struct {
	gen    uint64
	cancel context.CancelFunc
}

const (
	// livenessEvery is how often the keeper pings the connection while
	// locks may be held: a lock lost with its connection ends its context
	// within about this long.
	livenessEvery = 2 * time.Second
	// minReconnectWait and maxReconnectWait bound the pause between two
	// attempts to reach the database.
	minReconnectWait = 100 * time.Millisecond
	maxReconnectWait = 5 * time.Second
	// lockCallTimeout bounds one lock or unlock statement.
	lockCallTimeout = 5 * time.Second
	// minLockWait and maxLockWait bound Lock's pause between attempts on
	// a lock someone else holds (ctxlock's numbers).
	minLockWait = 500 * time.Millisecond
	maxLockWait = 10 * time.Second
	// sessionIdleTimeout is the lock session's idle_session_timeout: the
	// database ends the session, and frees its locks, once the keeper's
	// pings stop coming for this long. Without it a session whose client
	// vanished without the database seeing its connection close (a
	// network dropping packets, a host lost) keeps its locks until TCP
	// keepalives end it, hours by default, and every replica, this one
	// too once reconnected, waits for them.
	sessionIdleTimeout = 15 * livenessEvery
)

// errLockUnavailable is try's answer when it cannot take a lock now: held
// elsewhere, held by this process already, no connection, or closed.
var errLockUnavailable = errors.New("lock not available")

// newLocks connects to the database of cfg and starts the keeper. The
// first connection must succeed: a scanner that cannot reach its
// database does not open.
func newLocks(ctx context.Context, cfg *pgx.ConnConfig, log *slog.Logger) (*locks, error) {
	conn, err := dialLocks(ctx, cfg)
	if err != nil {
		return nil, err
	}
	l := &locks{
		cfg:  cfg,
		log:  log,
		mu:   make(ctxMutex, 1),
		conn: conn,
		gen:  1,
		held: map[int64]*heldLock{},
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	l.ctx, l.stop = context.WithCancel(context.Background())
	go l.keep()
	return l, nil
}

// keep pings the connection and, when it is lost, reconnects with a
// growing pause until Close.
func (l *locks) keep() {
	defer close(l.done)
	wait := minReconnectWait
	down := false
	tick := time.NewTicker(livenessEvery)
	defer tick.Stop()
	for {
		l.mu.Lock()
		connected := l.conn != nil
		l.mu.Unlock()
		if !connected {
			if err := l.reconnect(); err != nil {
				if l.ctx.Err() != nil {
					return // Close cut the dial short
				}
				if !down {
					l.log.Warn("scanner: lost the database connection that holds scan and update locks; scans wait until it is back",
						slog.String("error", err.Error()))
					down = true
				}
				select {
				case <-time.After(wait):
				case <-l.ctx.Done():
					return
				}
				wait = min(2*wait, maxReconnectWait)
				continue
			}
			if down {
				l.log.Info("scanner: the database connection for scan and update locks is back")
				down = false
			}
			wait = minReconnectWait
		}
		select {
		case <-tick.C:
		case <-l.wake:
		case <-l.ctx.Done():
			return
		}
		l.mu.Lock()
		if l.conn != nil && l.ctx.Err() == nil {
			ctx, cancel := context.WithTimeout(l.ctx, lockCallTimeout)
			if err := l.conn.Ping(ctx); err != nil {
				if !down && l.ctx.Err() == nil {
					l.log.Warn("scanner: lost the database connection that holds scan and update locks; scans wait until it is back",
						slog.String("error", err.Error()))
					down = true
				}
				l.dropLocked()
			}
			cancel()
		}
		l.mu.Unlock()
	}
}

// reconnect dials the database once, bounded by the connection's own
// timeout and by Close.
func (l *locks) reconnect() error {
	conn, err := dialLocks(l.ctx, l.cfg)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		conn.Close(context.Background())
		return errors.New("closed")
	}
	l.conn = conn
	l.gen++
	return nil
}

// dialLocks opens a lock session: a connection whose session the
// database ends after sessionIdleTimeout without a statement, unless cfg
// sets idle_session_timeout itself. A server without the setting (before
// PostgreSQL 14) is used as it is. Setting it takes at most
// lockCallTimeout.
func dialLocks(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, set := cfg.RuntimeParams["idle_session_timeout"]; set {
		return conn, nil
	}
	// Bounded like any other statement: the connect timeout has ended
	// with the connection made, and a connection stalling now would
	// otherwise hold the keeper, and every lock, until Close.
	sctx, cancel := context.WithTimeout(ctx, lockCallTimeout)
	_, err = conn.Exec(sctx, fmt.Sprintf("SET idle_session_timeout = %d", sessionIdleTimeout.Milliseconds()))
	cancel()
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42704") {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn.Close(cctx)
		cancel()
		return nil, err
	}
	return conn, nil
}

// dropLocked forgets the connection and ends every lock taken on it: the
// database released them when the session ended. l.mu is held.
func (l *locks) dropLocked() {
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l.conn.Close(ctx)
		cancel()
		l.conn = nil
	}
	for id, h := range l.held {
		h.cancel()
		delete(l.held, id)
	}
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// TryLock takes the lock named key if it is free now. The returned
// context ends when the lock is lost or released; it has ended already
// if the lock was not taken. The CancelFunc releases the lock.
func (l *locks) TryLock(parent context.Context, key string) (context.Context, context.CancelFunc) {
	child, release, err := l.try(parent, key)
	if err != nil {
		ctx, cancel := context.WithCancel(parent)
		cancel()
		return ctx, cancel
	}
	return child, release
}

// Lock waits until it takes the lock named key or parent ends; then it
// returns parent, whose Err tells the caller it has no lock.
func (l *locks) Lock(parent context.Context, key string) (context.Context, context.CancelFunc) {
	for wait := minLockWait; ; wait = min(2*wait, maxLockWait) {
		child, release, err := l.try(parent, key)
		if err == nil {
			return child, release
		}
		t := time.NewTimer(wait)
		select {
		case <-parent.Done():
			t.Stop()
			return parent, func() {}
		case <-l.ctx.Done():
			t.Stop()
			ctx, cancel := context.WithCancel(parent)
			cancel()
			return ctx, cancel
		case <-t.C:
		}
	}
}

func (l *locks) try(parent context.Context, key string) (context.Context, context.CancelFunc, error) {
	if err := parent.Err(); err != nil {
		return nil, nil, err
	}
	id := lockID(key)
	if err := l.mu.LockContext(parent); err != nil {
		return nil, nil, err
	}
	defer l.mu.Unlock()
	if l.closed || l.conn == nil {
		return nil, nil, errLockUnavailable
	}
	if _, ok := l.held[id]; ok {
		return nil, nil, errLockUnavailable
	}
	// The statement runs under a context of its own: a caller giving up
	// mid-statement would make pgx close the connection, and with it
	// every other lock this process holds. Close ends it.
	ctx, cancel := context.WithTimeout(l.ctx, lockCallTimeout)
	var got bool
	err := l.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, id).Scan(&got)
	cancel()
	if err != nil {
		// The statement's outcome is unknown: the lock may be held on
		// the session. Ending the session is the one way to be sure it
		// is not.
		l.dropLocked()
		return nil, nil, err
	}
	if !got {
		return nil, nil, errLockUnavailable
	}
	child, end := context.WithCancel(parent)
	h := &heldLock{gen: l.gen, cancel: end}
	l.held[id] = h
	var once sync.Once
	release := func() {
		once.Do(func() {
			end()
			l.unlock(key, id, h)
		})
	}
	return child, release, nil
}

// unlock releases key's lock if h still holds it on the current
// connection.
func (l *locks) unlock(key string, id int64, h *heldLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[id] != h {
		return // lost with its connection, or Close released it
	}
	delete(l.held, id)
	if l.conn == nil || h.gen != l.gen {
		return
	}
	ctx, cancel := context.WithTimeout(l.ctx, lockCallTimeout)
	defer cancel()
	var freed bool
	if err := l.conn.QueryRow(ctx, `SELECT pg_advisory_unlock($1)`, id).Scan(&freed); err != nil {
		// Not knowing whether the lock is free, end the session: that
		// frees it for certain.
		l.dropLocked()
		return
	}
	if !freed {
		// The session did not hold a lock this process counted as held
		// on it: something else released it (a statement run on this
		// connection by hand, or a bug). It is free now either way;
		// say so, since the lock did not protect what it was taken for.
		l.log.Warn("scanner: released a lock the database no longer held; work done under it may have overlapped another replica's",
			slog.String("lock", key))
	}
}

// Close ends every lock, the keeper and the connection. It may be called
// more than once (libindex and libvuln close their Locker too).
// A call made while another is under way returns when that one has
// finished.
func (l *locks) Close(context.Context) error {
	// Ended before taking l.mu: a statement holding it on a stalled
	// connection gives up now, not at its timeout.
	l.stop()
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		<-l.done
		l.mu.Lock()
		defer l.mu.Unlock()
		l.dropLocked()
	})
	return nil
}

// lockID is ctxlock's key: 64-bit FNV-1a of key, as PostgreSQL's bigint.
func lockID(key string) int64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return int64(binary.BigEndian.Uint64(h.Sum(nil)))
}
