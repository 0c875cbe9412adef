package postgres

import (
	"strings"
	"testing"

	"github.com/airlock-registry/airlock/internal/pgtest"
)

// TestPoolSize: the pool has room for reads beside writes waiting on
// their commit unless the connection string sizes it.
func TestPoolSize(t *testing.T) {
	t.Parallel()
	dsn := pgtest.DSN(t)
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	for _, c := range []struct {
		dsn  string
		want int32
	}{
		{dsn, defaultMaxConns},
		{dsn + sep + "pool_max_conns=3", 3},
		{dsn + sep + "pool_max_conns=40", 40},
	} {
		s := openTest(t, c.dsn, 0)
		if got := s.Pool().Config().MaxConns; got != c.want {
			t.Errorf("%s: pool of %d connections; want %d", c.dsn[strings.Index(c.dsn, "?")+1:], got, c.want)
		}
	}
}
