// Package netfault puts a TCP proxy on loopback in front of a server, for
// tests that take the server away from its clients in the two ways a
// network does: Cut, as a server going down (connections closed, new ones
// refused), and Stall, as a network dropping every packet or a frozen
// host (nothing passes either way and nothing is closed). The listener
// stays through both, so the address clients were given stays valid.
package netfault

import (
	"errors"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"
)

// Link is the proxy. Its zero value is not usable; see New.
type Link struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	down    bool
	stalled bool
	conns   map[net.Conn]bool
	// refused counts connections closed on arrival while cut.
	refused int
	wg      sync.WaitGroup
	once    sync.Once
}

// New proxies connections to target (host:port) until the test ends.
func New(t testing.TB, target string) *Link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{ln: ln, target: target, conns: map[net.Conn]bool{}}
	l.wg.Add(1)
	go l.serve()
	t.Cleanup(l.Close)
	return l
}

// Rewrite returns the URL-form connection string dsn pointed at a new
// Link to its host, and the Link.
func Rewrite(t testing.TB, dsn string) (*Link, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		t.Fatalf("netfault: %q is no URL with a host: %v", dsn, err)
	}
	l := New(t, u.Host)
	u.Host = l.Addr()
	return l, u.String()
}

// Addr is the proxy's address.
func (l *Link) Addr() string { return l.ln.Addr().String() }

func (l *Link) serve() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.down {
			l.refused++
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.conns[c] = true
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.pipe(c)
		}()
	}
}

// pipe copies between the client c and a new connection to the server
// until either side ends, dropping what either sends while stalled.
func (l *Link) pipe(c net.Conn) {
	defer l.forget(c)
	s, err := net.DialTimeout("tcp", l.target, 5*time.Second)
	if err != nil {
		return
	}
	l.mu.Lock()
	if l.down {
		l.mu.Unlock()
		s.Close()
		return
	}
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
	// One side ended: end the other, so the second copy returns.
	c.Close()
	s.Close()
	<-done
}

func (l *Link) forget(c net.Conn) {
	c.Close()
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// Cut ends every connection and refuses new ones until Mend.
func (l *Link) Cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = true
	for c := range l.conns {
		c.Close()
	}
}

// Stall drops what either side sends, on open connections and new ones,
// and closes nothing, until Mend. Connections whose bytes were dropped
// stay broken after it; new ones work.
func (l *Link) Stall() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stalled = true
}

// Mend ends a Cut or a Stall.
func (l *Link) Mend() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down, l.stalled = false, false
}

// Refused is how many connections a Cut closed on arrival.
func (l *Link) Refused() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused
}

// Close stops the proxy and ends its connections. It may be called more
// than once; the test's end calls it too.
func (l *Link) Close() {
	l.once.Do(func() {
		err := l.ln.Close()
		l.Cut()
		l.wg.Wait()
		if err != nil && !errors.Is(err, net.ErrClosed) {
			panic(err)
		}
	})
}
