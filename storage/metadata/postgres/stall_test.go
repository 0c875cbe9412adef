package postgres

import (
	"strings"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/internal/netfault"
	"github.com/airlock-registry/airlock/internal/pgtest"
)

// openStalling opens a store through a link the test can stall, with
// opTimeout as its bound, and returns the database's own connection
// string too, for a store that sets things up at no risk of the bound.
func openStalling(t *testing.T, opTimeout time.Duration) (*Store, *netfault.Link, string) {
	t.Helper()
	direct := pgtest.DSN(t)
	l, dsn := netfault.Rewrite(t, direct)
	s, err := Open(t.Context(), Options{DSN: dsn, OpTimeout: opTimeout})
	if err != nil {
		t.Fatal(err)
	}
	// The link goes first, so that closing the store meets closed
	// connections rather than silent ones.
	t.Cleanup(func() {
		l.Close()
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
