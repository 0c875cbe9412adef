package scanner

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/quay/claircore/pkg/ctxlock/v2"

	"github.com/airlock-registry/airlock/internal/netfault"
	"github.com/airlock-registry/airlock/internal/pgtest"
)

// newTestLocks opens locks on dsn, logging into the returned buffer, and
// closes them at the test's end.
func newTestLocks(t *testing.T, dsn string) (*locks, *syncBuffer) {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	// Generous: a new PostgreSQL session under disk load (fsync taking
	// seconds) has taken more than 2 s to set up.
	cfg.ConnectTimeout = 15 * time.Second
	logs := &syncBuffer{}
	l, err := newLocks(t.Context(), cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(context.Background()) })
	return l, logs
}

// mustTryLock takes key on l or ends the test.
func mustTryLock(t *testing.T, l *locks, key string) (context.Context, context.CancelFunc) {
	t.Helper()
	ctx, release := l.TryLock(t.Context(), key)
	if ctx.Err() != nil {
		t.Fatalf("TryLock %q: %v", key, ctx.Err())
	}
	return ctx, release
}

// dbAddr is the host:port of dsn's database, as written in dsn, for a
// test to put a proxy in front of it.
func dbAddr(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	if !strings.Contains(dsn, addr) {
		t.Fatalf("the DSN does not name its database as %s: %s", addr, dsn)
	}
	return addr
}

// TestLocksExclude takes locks from two processes' worth of locks and
// from claircore's own locker on the same database: each key has one
// holder at a time, within a process too, and a released key is free.
func TestLocksExclude(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, _ := newTestLocks(t, dsn)
	b, _ := newTestLocks(t, dsn)

	ctx, release := a.TryLock(t.Context(), "manifest-1")
	if ctx.Err() != nil {
		t.Fatalf("first TryLock: %v", ctx.Err())
	}
	if c, _ := b.TryLock(t.Context(), "manifest-1"); c.Err() == nil {
		t.Fatal("a second process took a lock the first holds")
	}
	if c, _ := a.TryLock(t.Context(), "manifest-1"); c.Err() == nil {
		t.Fatal("the holding process took its own lock twice")
	}
	if c, rel := b.TryLock(t.Context(), "manifest-2"); c.Err() != nil {
		t.Fatalf("another key: %v", c.Err())
	} else {
		rel()
	}

	// A replica still on claircore's locker hashes keys the same way.
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	cl, err := ctxlock.New(t.Context(), pool)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cl.Close(context.Background())
		// ctxlock's pinger notices Close only on its next 5 s tick: wait
		// for it, or TestMain's leak check may find it still running.
		time.Sleep(5*time.Second + 500*time.Millisecond)
	}()
	if c, rel := cl.TryLock(t.Context(), "manifest-1"); c.Err() == nil {
		rel()
		t.Fatal("claircore's locker took a lock this process holds")
	}

	release()
	if ctx.Err() == nil {
		t.Error("the released lock's context did not end")
	}
	release() // a second release does nothing
	waitCtx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, rel := b.Lock(waitCtx, "manifest-1")
	if c.Err() != nil {
		t.Fatalf("Lock after the release: %v", c.Err())
	}
	// claircore's locker sees it held now by b, and free after.
	if cc, crel := cl.TryLock(t.Context(), "manifest-1"); cc.Err() == nil {
		crel()
		t.Fatal("claircore's locker took a lock the second process holds")
	}
	rel()
	cc, crel := cl.TryLock(t.Context(), "manifest-1")
	if cc.Err() != nil {
		t.Fatalf("claircore's locker could not take the released lock: %v", cc.Err())
	}
	if c, _ := a.TryLock(t.Context(), "manifest-1"); c.Err() == nil {
		t.Fatal("took a lock claircore's locker holds")
	}
	crel()
}

// TestLockWaitsForHolder makes Lock wait for a holder in another process
// and give up when its context ends.
func TestLockWaitsForHolder(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	a, _ := newTestLocks(t, dsn)
	b, _ := newTestLocks(t, dsn)
	_, release := a.TryLock(t.Context(), "k")

	short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if c, rel := b.Lock(short, "k"); c.Err() == nil {
		rel()
		t.Fatal("Lock took a held lock")
	}
	if took := time.Since(t0); took > 3*time.Second {
		t.Errorf("Lock gave up %v after its context ended", took)
	}

	time.AfterFunc(200*time.Millisecond, release)
	long, cancel2 := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel2()
	c, rel := b.Lock(long, "k")
	if c.Err() != nil {
		t.Fatalf("Lock after the holder let go: %v", c.Err())
	}
	rel()
}

// TestLocksOutage cuts the locks' connection: a held lock's context ends,
// the outage is logged once however long it lasts, no lock is handed out
// meanwhile, and locks work again once the database is back. Closing
// while the database is away returns at once.
func TestLocksOutage(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	target := dbAddr(t, dsn)
	px := netfault.New(t, target)
	proxied := strings.Replace(dsn, target, px.Addr(), 1)
	l, logs := newTestLocks(t, proxied)
	other, _ := newTestLocks(t, dsn)

	held, release := mustTryLock(t, l, "held")
	defer release()
	px.Cut()
	select {
	case <-held.Done():
	case <-time.After(3 * livenessEvery):
		t.Fatal("a lock whose connection was cut still looks held")
	}
	// The database freed it with the session: another process takes it.
	if c, rel := other.TryLock(t.Context(), "held"); c.Err() != nil {
		t.Fatalf("the lost lock is still held in the database: %v", c.Err())
	} else {
		rel()
	}
	for range 20 {
		if c, _ := l.TryLock(t.Context(), "new"); c.Err() == nil {
			t.Fatal("handed out a lock without a connection")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings over a 2 s outage, want 1:\n%s", n, logs)
	}

	px.Mend()
	waitCtx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c, rel := l.Lock(waitCtx, "new")
	if c.Err() != nil {
		t.Fatalf("no lock after the database came back: %v\n%s", c.Err(), logs)
	}
	rel()
	if !strings.Contains(logs.String(), "is back") {
		t.Errorf("the reconnection is not logged:\n%s", logs)
	}

	px.Cut()
	time.Sleep(3 * livenessEvery / 2)
	t0 := time.Now()
	l.Close(context.Background())
	select {
	case <-l.done:
	default:
		t.Fatal("the keeper still runs after Close")
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("Close took %v with the database away", took)
	}
	if c, _ := l.TryLock(t.Context(), "after"); c.Err() == nil {
		t.Error("handed out a lock after Close")
	}
}

// TestLockCallerGivingUpKeepsOtherLocks cancels a caller's context while
// it takes a lock: the other locks of the process stay held.
func TestLockCallerGivingUpKeepsOtherLocks(t *testing.T) {
	t.Parallel()
	l, _ := newTestLocks(t, pgtest.DSN(t))
	held, release := mustTryLock(t, l, "a")
	defer release()
	for range 50 {
		ctx, cancel := context.WithCancel(t.Context())
		go cancel()
		_, rel := l.TryLock(ctx, "b")
		rel()
	}
	if held.Err() != nil {
		t.Fatal("a caller giving up ended another caller's lock")
	}
}

// TestLockHonoursCallerDeadline holds the connection's mutex as a
// statement stuck on a stalled connection does (up to lockCallTimeout):
// TryLock and Lock give up when their caller's context ends instead of
// waiting for it.
func TestLockHonoursCallerDeadline(t *testing.T) {
	t.Parallel()
	l, _ := newTestLocks(t, pgtest.DSN(t))
	l.mu.Lock()
	returned := make(chan error, 2)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		c, rel := l.TryLock(ctx, "k")
		defer rel()
		returned <- c.Err()
	}()
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		c, rel := l.Lock(ctx, "k")
		defer rel()
		returned <- c.Err()
	}()
	for range 2 {
		select {
		case err := <-returned:
			if err == nil {
				t.Error("took a lock while the connection was busy")
			}
		case <-time.After(30 * time.Second):
			l.mu.Unlock()
			t.Fatal("a lock call waits on a busy connection past its caller's deadline")
		}
	}
	l.mu.Unlock()
	c, rel := l.TryLock(t.Context(), "k")
	if c.Err() != nil {
		t.Fatalf("TryLock once the connection is free: %v", c.Err())
	}
	rel()
}

// TestUnlockOfALockTheDatabaseDropped releases a lock the session no
// longer holds (freed on the connection behind the locker's back): the
// release says so in the log rather than passing silently.
func TestUnlockOfALockTheDatabaseDropped(t *testing.T) {
	t.Parallel()
	l, logs := newTestLocks(t, pgtest.DSN(t))
	_, release := mustTryLock(t, l, "k")
	l.mu.Lock()
	_, err := l.conn.Exec(t.Context(), `SELECT pg_advisory_unlock_all()`)
	l.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	release()
	if !strings.Contains(logs.String(), "released a lock the database no longer held") {
		t.Errorf("no warning for a lock the database did not hold at release; log:\n%s", logs)
	}
	c, rel := l.TryLock(t.Context(), "k")
	if c.Err() != nil {
		t.Fatalf("TryLock after the release: %v", c.Err())
	}
	rel()
}

// TestConcurrentClose makes a second Close wait for the first: when it
// returns, the keeper is gone and no lock looks held.
func TestConcurrentClose(t *testing.T) {
	t.Parallel()
	l, _ := newTestLocks(t, pgtest.DSN(t))
	held, release := mustTryLock(t, l, "k")
	defer release()
	l.mu.Lock() // the first Close waits for it
	first := make(chan struct{})
	go func() {
		l.Close(context.Background())
		close(first)
	}()
	second := make(chan struct{})
	time.AfterFunc(100*time.Millisecond, func() {
		l.Close(context.Background())
		close(second)
	})
	select {
	case <-second:
		t.Error("a second Close returned while the first was under way")
	case <-time.After(500 * time.Millisecond):
	}
	l.mu.Unlock()
	<-second
	select {
	case <-l.done:
	default:
		t.Error("the keeper still runs when the second Close returns")
	}
	if held.Err() == nil {
		t.Error("a lock still looks held when the second Close returns")
	}
	<-first
}

// stallProxy forwards loopback connections to the database and can stall
// the open ones as a network dropping every packet would: nothing more
// passes either way and neither end learns the other has gone, the
// database's end included. New connections pass.
type stallProxy struct {
	addr   string
	target string
	mu     sync.Mutex
	conns  map[*stallPair]bool
	l      net.Listener
	// stallOn, when set, stalls a connection as soon as its client sends
	// a packet containing it.
	stallOn string
}

type stallPair struct {
	c, up   net.Conn
	stalled bool
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{addr: l.Addr().String(), target: target, conns: map[*stallPair]bool{}, l: l}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pair := &stallPair{c: c, up: up}
			p.mu.Lock()
			p.conns[pair] = true
			p.mu.Unlock()
			wg.Go(func() { p.pump(pair, c, up) })
			wg.Go(func() { p.pump(pair, up, c) })
		}
	})
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		for pair := range p.conns {
			pair.c.Close()
			pair.up.Close()
		}
		p.mu.Unlock()
		wg.Wait()
	})
	return p
}

// pump copies from src to dst until src ends, dropping what it reads once
// the pair is stalled; a stalled pair's end is not passed on.
func (p *stallProxy) pump(pair *stallPair, src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		if p.stallOn != "" && src == pair.c && strings.Contains(string(buf[:n]), p.stallOn) {
			pair.stalled = true
		}
		stalled := pair.stalled
		p.mu.Unlock()
		if n > 0 && !stalled {
			dst.Write(buf[:n])
		}
		if err != nil {
			if !stalled {
				dst.Close()
			}
			return
		}
	}
}

// stall stops the connections open now.
func (p *stallProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pair := range p.conns {
		pair.stalled = true
	}
}

// stallWhen stalls, from now on, every connection once its client sends
// text containing s; "" turns it off.
func (p *stallProxy) stallWhen(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stallOn = s
}

// cut closes the connections open now, as a database restart would.
func (p *stallProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pair := range p.conns {
		pair.c.Close()
		pair.up.Close()
		delete(p.conns, pair)
	}
}

// TestLocksReconnectStallsAfterConnecting loses the locks' connection and
// stalls the next one right after it is established, while the lock
// session is being set up: the attempt gives up and a later one gets the
// locks working again, rather than the keeper waiting on it for good.
func TestLocksReconnectStallsAfterConnecting(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	target := dbAddr(t, dsn)
	px := newStallProxy(t, target)
	proxied := strings.Replace(dsn, target, px.addr, 1)
	l, logs := newTestLocks(t, proxied)

	px.stallWhen("idle_session_timeout")
	px.cut()
	// The keeper notices the loss within livenessEvery and dials again;
	// that connection stalls setting up the session.
	time.Sleep(livenessEvery + time.Second)
	px.stallWhen("")
	waitCtx, cancel := context.WithTimeout(t.Context(), 3*lockCallTimeout)
	defer cancel()
	c, rel := l.Lock(waitCtx, "k")
	if c.Err() != nil {
		t.Fatalf("no lock after the database came back: %v\n%s", c.Err(), logs)
	}
	rel()
}

// TestLocksStalledNetwork stalls the locks' connection without either end
// seeing it close: the process gives the held lock up, and the database
// lets it go soon after too, rather than keeping it for the dead session
// until TCP keepalives (hours by default) end it.
func TestLocksStalledNetwork(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	target := dbAddr(t, dsn)
	px := newStallProxy(t, target)
	proxied := strings.Replace(dsn, target, px.addr, 1)
	// A short idle timeout for the test's sake; the default is checked
	// below.
	l, _ := newTestLocks(t, proxied+"&idle_session_timeout=3s")
	other, _ := newTestLocks(t, dsn)

	other.mu.Lock()
	var def string
	err := other.conn.QueryRow(t.Context(), `SHOW idle_session_timeout`).Scan(&def)
	other.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if def == "0" {
		t.Error("the lock session has no idle timeout: a session whose client vanished keeps its locks")
	}

	held, release := mustTryLock(t, l, "held")
	defer release()
	px.stall()
	select {
	case <-held.Done():
	case <-time.After(3*livenessEvery + lockCallTimeout):
		t.Fatal("a lock whose connection stalled still looks held")
	}
	waitCtx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c, rel := other.Lock(waitCtx, "held")
	if c.Err() != nil {
		t.Fatalf("the database still holds the lock of a session whose client gave it up: %v", c.Err())
	}
	rel()
}

// TestLocksCloseStalledNetwork closes the locks while the keeper's ping
// waits on a stalled connection: Close returns at once rather than after
// the ping's timeout, and the keeper is gone.
func TestLocksCloseStalledNetwork(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	target := dbAddr(t, dsn)
	px := newStallProxy(t, target)
	proxied := strings.Replace(dsn, target, px.addr, 1)
	l, logs := newTestLocks(t, proxied)
	held, release := mustTryLock(t, l, "held")
	defer release()
	px.stall()
	// The keeper's next ping starts within livenessEvery and then waits
	// for its timeout.
	time.Sleep(livenessEvery + 500*time.Millisecond)
	t0 := time.Now()
	l.Close(context.Background())
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("Close took %v on a stalled connection", took)
	}
	select {
	case <-l.done:
	default:
		t.Error("the keeper still runs after Close")
	}
	if held.Err() == nil {
		t.Error("a lock still looks held after Close")
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("Close cutting the ping short is logged as a lost connection:\n%s", logs)
	}
}
