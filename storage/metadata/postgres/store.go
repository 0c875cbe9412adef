package postgres

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Channel is the NOTIFY channel changes are announced on.
const Channel = "airlock_metadata"

// DefaultStaleness is how long a cached answer may be served without the
// change announcements confirming it is current.
const DefaultStaleness = 30 * time.Second

// Options configure a Store.
type Options struct {
	// DSN is the PostgreSQL connection string (a URL or key=value pairs).
	DSN string
	// Staleness bounds how old a cached answer may be while the change
	// announcements are not arriving (the listening connection is down).
	// While they arrive, a change made by any replica reaches this one's
	// cache within a round trip. 0 means DefaultStaleness.
	Staleness time.Duration
	// Logger receives the store's warnings (a lost listening connection).
	// Nil discards them.
	Logger *slog.Logger

	// listenOn replaces Channel as the channel listened on, for tests of
	// a listener that hears nothing. Announcements still go to Channel.
	listenOn string
}

// Store is the PostgreSQL metadata index. It is safe for concurrent use,
// by several goroutines and several processes.
type Store struct {
	pool *pgxpool.Pool
	opts Options
	log  *slog.Logger
	// id is the store's identity, shared by every replica (event IDs are
	// "<id>-<seq>").
	id string

	// The rest of the Store's fields (cache, listener, access batching)
	// live with the code that uses them; see cache.go and access.go.
	state
}

// Open connects to the database, applies the migrations and starts the
// listener and the access-time writer.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Staleness <= 0 {
		o.Staleness = DefaultStaleness
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(o.DSN)
	if err != nil {
		return nil, fmt.Errorf("metadata: parsing the PostgreSQL connection string: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata: connecting to PostgreSQL: %w", err)
	}
	s := &Store{pool: pool, opts: o, log: log}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	if s.id, err = storeID(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return s, nil
}

// ID is the store's identity, the same on every replica.
func (s *Store) ID() string { return s.id }

// Pool is the store's connection pool, for other parts of airlock that
// keep their own tables in the same database.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close stops the listener, writes pending access times and closes the
// connections.
func (s *Store) Close() error {
	err := s.stop()
	s.pool.Close()
	return err
}

// notify announces a change of kind (a short word such as "tag" or
// "image") to key, within tx: the announcement is sent when tx commits,
// and never if it rolls back.
func notify(ctx context.Context, tx pgx.Tx, kind, key string) error {
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", Channel, kind+" "+key); err != nil {
		return fmt.Errorf("metadata: announcing a %s change: %w", kind, err)
	}
	return nil
}

// migrationLock is the advisory lock key that serialises migrations.
const migrationLock = 0x61697231 // "air1"

type migration struct {
	version int
	name    string
	sql     string
}

func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("metadata: migration file %s is not named NNNN_name.sql", e.Name())
		}
		b, err := migrationFiles.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{v, e.Name(), string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("metadata: migrations %s and %s share a version", ms[i-1].name, ms[i].name)
		}
	}
	return ms, nil
}

// migrate applies the migrations the database lacks, in one transaction
// under an advisory lock.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
			return fmt.Errorf("metadata: waiting for the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS airlock_meta_migrations (
			version integer PRIMARY KEY,
			name text NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("metadata: creating the migrations table: %w", err)
		}
		var have int
		if err := tx.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM airlock_meta_migrations").Scan(&have); err != nil {
			return fmt.Errorf("metadata: reading the schema version: %w", err)
		}
		if len(ms) > 0 && have > ms[len(ms)-1].version {
			return fmt.Errorf("metadata: the database's schema is version %d, newer than this airlock knows (%d): run a newer airlock",
				have, ms[len(ms)-1].version)
		}
		for _, m := range ms {
			if m.version <= have {
				continue
			}
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("metadata: applying migration %s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO airlock_meta_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
				return fmt.Errorf("metadata: recording migration %s: %w", m.name, err)
			}
		}
		return nil
	})
}

// storeID reads the store's identity, creating it on first use.
func storeID(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	var id string
	err := pool.QueryRow(ctx, `INSERT INTO airlock_meta_settings (name, value) VALUES ('store_id', $1)
		ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING value`, hex.EncodeToString(b)).Scan(&id)
	if err != nil {
		return "", fmt.Errorf("metadata: reading the store's identity: %w", err)
	}
	if id == "" {
		return "", errors.New("metadata: the store's identity is empty")
	}
	return id, nil
}
