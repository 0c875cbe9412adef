package postgres

import (
	"testing"
	"time"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/storage/metadata/metadatatest"
)

// openTest opens a Store on a new database, closed when t ends.
func openTest(t *testing.T, dsn string, staleness time.Duration) *Store {
	t.Helper()
	s, err := Open(t.Context(), Options{DSN: dsn, Staleness: staleness})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestContentIndex(t *testing.T) {
	t.Parallel()
	metadatatest.RunContentIndex(t, func(t *testing.T) metadatatest.ContentIndex {
		return openTest(t, pgtest.DSN(t), 0)
	})
}
