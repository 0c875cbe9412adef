package postgres

import (
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/internal/pgtest"
)

// stallLink is a TCP proxy in front of the test's PostgreSQL that a test
// silences without closing anything, as a network dropping every packet
// or a frozen server host does.
type stallLink struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	stalled bool
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

// newStallLink returns a link to the server of dsn and dsn rewritten to go
// through it.
func newStallLink(t *testing.T, dsn string) (*stallLink, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("pgtest DSN %q: %v", dsn, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &stallLink{ln: ln, target: u.Host, conns: map[net.Conn]bool{}}
	l.wg.Add(1)
	go l.serve()
	u.Host = ln.Addr().String()
	return l, u.String()
}

func (l *stallLink) serve() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		l.conns[c] = true
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.pipe(c)
		}()
	}
}

func (l *stallLink) pipe(c net.Conn) {
	defer l.forget(c)
	s, err := net.DialTimeout("tcp", l.target, 5*time.Second)
	if err != nil {
		return
	}
	l.mu.Lock()
	l.conns[s] = true
	l.mu.Unlock()
	defer l.forget(s)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			l.mu.Lock()
			stalled := l.stalled
			l.mu.Unlock()
			if n > 0 && !stalled {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}
	go cp(s, c)
	go cp(c, s)
	<-done
	c.Close()
	s.Close()
	<-done
}

func (l *stallLink) forget(c net.Conn) {
	c.Close()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// stall drops whatever either side sends from now on, and closes nothing.
func (l *stallLink) stall() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stalled = true
}

func (l *stallLink) close() {
	l.ln.Close()
	l.mu.Lock()
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// unstall lets what either side sends through again. Connections whose
// bytes were dropped meanwhile stay broken; new ones work.
func (l *stallLink) unstall() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stalled = false
}

// openStalling opens a store through a link the test can stall, with
// opTimeout as its bound, and returns the database's own connection
// string too, for a store that sets things up at no risk of the bound.
func openStalling(t *testing.T, opTimeout time.Duration) (*Store, *stallLink, string) {
	t.Helper()
	direct := pgtest.DSN(t)
	l, dsn := newStallLink(t, direct)
	s, err := Open(t.Context(), Options{DSN: dsn, OpTimeout: opTimeout})
	if err != nil {
		l.close()
		t.Fatal(err)
	}
	// The link goes first, so that closing the store meets closed
	// connections rather than silent ones.
	t.Cleanup(func() {
		l.close()
		s.Close()
	})
	return s, l, direct
}

// TestConnectTimeout: a connection gives up after defaultConnectTimeout
// unless the connection string sets connect_timeout, 0 (no limit)
// included.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	for _, tc := range []struct {
		dsn  string
		want time.Duration
	}{
		{dsn, defaultConnectTimeout},
		{dsn + sep + "connect_timeout=0", 0},
		{dsn + sep + "connect_timeout=7", 7 * time.Second},
	} {
		s := openTest(t, tc.dsn, 0)
		if got := s.pool.Config().ConnConfig.ConnectTimeout; got != tc.want {
			t.Errorf("%s: connect timeout %v, want %v", tc.dsn, got, tc.want)
		}
	}
}
