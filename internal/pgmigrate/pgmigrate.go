// Package pgmigrate applies a set of embedded SQL migrations to a
// PostgreSQL database: versioned files named NNNN_name.sql, applied in
// order in one transaction that holds an advisory lock, so that replicas
// starting together apply each once, and recorded in a table of their own.
// Migrations are forward-only: a database carrying a version the set does
// not know was written by a newer airlock, and is refused rather than
// used with a schema this one does not understand.
package pgmigrate

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Set is one part of airlock's schema.
type Set struct {
	// Name says whose schema it is in errors ("metadata", "cluster").
	Name string
	// Table records the versions applied; it is created if missing.
	Table string
	// Lock is the advisory lock key that serialises the set's migrations.
	Lock int64
	// Files holds the NNNN_name.sql files, at its root.
	Files fs.FS
}

type migration struct {
	version int
	name    string
	sql     string
}

func (s Set) migrations() ([]migration, error) {
	entries, err := fs.ReadDir(s.Files, ".")
	if err != nil {
		return nil, fmt.Errorf("%s: reading the migrations: %w", s.Name, err)
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("%s: migration file %s is not named NNNN_name.sql", s.Name, e.Name())
		}
		b, err := fs.ReadFile(s.Files, e.Name())
		if err != nil {
			return nil, fmt.Errorf("%s: reading migration %s: %w", s.Name, e.Name(), err)
		}
		ms = append(ms, migration{v, e.Name(), string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("%s: migrations %s and %s share a version", s.Name, ms[i-1].name, ms[i].name)
		}
	}
	return ms, nil
}

// Apply applies the migrations the database lacks.
func (s Set) Apply(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := s.migrations()
	if err != nil {
		return err
	}
	table := pgx.Identifier{s.Table}.Sanitize()
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", s.Lock); err != nil {
			return fmt.Errorf("%s: waiting for the migration lock: %w", s.Name, err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (
			version integer PRIMARY KEY,
			name text NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("%s: creating the migrations table: %w", s.Name, err)
		}
		var have int
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+table).Scan(&have); err != nil {
			return fmt.Errorf("%s: reading the schema version: %w", s.Name, err)
		}
		if len(ms) > 0 && have > ms[len(ms)-1].version {
			return fmt.Errorf("%s: the database's schema is version %d, newer than this airlock knows (%d): run a newer airlock",
				s.Name, have, ms[len(ms)-1].version)
		}
		for _, m := range ms {
			if m.version <= have {
				continue
			}
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("%s: applying migration %s: %w", s.Name, m.name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+table+" (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
				return fmt.Errorf("%s: recording migration %s: %w", s.Name, m.name, err)
			}
		}
		return nil
	})
}
