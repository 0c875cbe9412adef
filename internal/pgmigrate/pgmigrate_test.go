package pgmigrate

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/airlock-registry/airlock/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func pool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(t.Context(), pgtest.DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func set(files map[string]string) Set {
	fsys := fstest.MapFS{}
	for name, sql := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(sql)}
	}
	return Set{Name: "test", Table: "test_migrations", Lock: 42, Files: fsys}
}

// TestApply: migrations apply once each, in version order, however many
// replicas start at once; a later set applies only what is new.
func TestApply(t *testing.T) {
	t.Parallel()
	p := pool(t)
	first := set(map[string]string{
		"0002_b.sql": "ALTER TABLE t ADD COLUMN b int",
		"0001_a.sql": "CREATE TABLE t (a int)",
	})
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = first.Apply(t.Context(), p) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	later := set(map[string]string{
		"0001_a.sql": "CREATE TABLE t (a int)",
		"0002_b.sql": "ALTER TABLE t ADD COLUMN b int",
		"0003_c.sql": "ALTER TABLE t ADD COLUMN c int",
	})
	if err := later.Apply(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := p.QueryRow(context.Background(), "SELECT count(*) FROM test_migrations").Scan(&n); err != nil || n != 3 {
		t.Fatalf("recorded migrations = %d (%v), want 3", n, err)
	}
	if _, err := p.Exec(t.Context(), "INSERT INTO t (a, b, c) VALUES (1, 2, 3)"); err != nil {
		t.Fatalf("the schema lacks a migration's change: %v", err)
	}
}

// TestApplyRefuses: a database newer than the set, misnamed files, two
// files with one version, and a failing migration (which leaves nothing
// applied) are refused, each saying so.
func TestApplyRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup *Set
		set   Set
		want  string
	}{
		{
			name:  "newer database",
			setup: new(set(map[string]string{"0001_a.sql": "SELECT 1", "0002_b.sql": "SELECT 1"})),
			set:   set(map[string]string{"0001_a.sql": "SELECT 1"}),
			want:  "schema is version 2, newer than this airlock knows (1)",
		},
		{name: "misnamed", set: set(map[string]string{"a.sql": "SELECT 1"}), want: "a.sql is not named NNNN_name.sql"},
		{name: "shared version", set: set(map[string]string{"0001_a.sql": "SELECT 1", "01_b.sql": "SELECT 1"}), want: "share a version"},
		{name: "failing", set: set(map[string]string{"0001_a.sql": "CREATE TABLE u (a int)", "0002_b.sql": "SELEC 1"}), want: "applying migration 0002_b.sql"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := pool(t)
			if tt.setup != nil {
				if err := tt.setup.Apply(t.Context(), p); err != nil {
					t.Fatal(err)
				}
			}
			err := tt.set.Apply(t.Context(), p)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "test: ") {
				t.Fatalf("Apply = %v, want an error saying %q", err, tt.want)
			}
			if tt.name == "failing" {
				var exists bool
				if err := p.QueryRow(t.Context(), "SELECT to_regclass('u') IS NOT NULL").Scan(&exists); err != nil || exists {
					t.Errorf("a failed set left its first migration applied (%v)", err)
				}
			}
		})
	}
}
