package postgres

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

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

// TestPoolSizeOnALargeHost: pgx would size the pool by the CPUs; the
// store's default holds whatever the host, so that the replicas of a
// cluster stay within PostgreSQL's connection limit.
func TestPoolSizeOnALargeHost(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		dsn       string
		cpus      int32 // what pgx chose
		want      int32
		whyWanted string
	}{
		{"postgres://db/airlock", 64, defaultMaxConns, "a 64-CPU host keeps the default"},
		{"postgres://db/airlock", 2, defaultMaxConns, "a small host gets the default"},
		{"postgres://db/airlock?pool_max_conns=64", 64, 64, "the connection string decides"},
		{"host=db dbname=airlock pool_max_conns=3", 3, 3, "the connection string decides"},
	} {
		cfg, err := pgxpool.ParseConfig(c.dsn)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(c.dsn, "pool_max_conns") {
			cfg.MaxConns = c.cpus
		}
		sizePool(cfg, c.dsn)
		if cfg.MaxConns != c.want {
			t.Errorf("%s with pgx's %d: pool of %d; want %d (%s)", c.dsn, c.cpus, cfg.MaxConns, c.want, c.whyWanted)
		}
	}
}
