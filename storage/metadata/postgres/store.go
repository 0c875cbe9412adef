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
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/airlock-registry/airlock/internal/pgmigrate"
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
	// OpTimeout bounds each read and each write transaction (but
	// Reidentify's, see withdrawTimeout); 0 means DefaultOpTimeout.
	OpTimeout time.Duration

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
	// quiet fails writes and shared reads at once while PostgreSQL is
	// known not to answer.
	quiet *silence

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
	if o.OpTimeout <= 0 {
		o.OpTimeout = DefaultOpTimeout
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(o.DSN)
	if err != nil {
		return nil, fmt.Errorf("metadata: parsing the PostgreSQL connection string: %w", err)
	}
	sizePool(cfg, o.DSN)
	if cfg.ConnConfig.ConnectTimeout == 0 && !strings.Contains(o.DSN, "connect_timeout") {
		// A server that accepts the connection and never answers (a
		// frozen host, a network dropping packets) would hold the dial
		// until TCP gave up, minutes later. A connect_timeout in the
		// connection string wins, 0 (no limit) included.
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("metadata: connecting to PostgreSQL: %w", err)
	}
	s := &Store{pool: pool, opts: o, log: log, quiet: &silence{window: o.OpTimeout, log: log}}
	s.flights.timeout, s.flights.quiet = o.OpTimeout, s.quiet
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

// DefaultOpTimeout bounds one read or one write transaction (its retries
// each). A database that stops answering without closing its connections
// (a network dropping packets, a frozen host, a stopped server) would
// otherwise hold a pull until its client gave up, and a background write
// for good; past it the store reports metadata.ErrUnavailable, and a
// pull is answered 503, as when the database refuses connections. It is
// generous because a write waits for PostgreSQL's fsync, which a loaded
// disk can stretch to seconds.
const DefaultOpTimeout = 10 * time.Second

// defaultConnectTimeout bounds opening a connection unless the connection
// string sets connect_timeout.
const defaultConnectTimeout = 5 * time.Second

// bounded is ctx limited to one operation's time.
func (s *Store) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.OpTimeout)
}

// defaultMaxConns is the connection pool's size unless the connection
// string sets pool_max_conns: per replica, so a three-replica cluster
// with a scanner stays well within PostgreSQL's default of 100.
const defaultMaxConns = 12

// sizePool gives the pool defaultMaxConns connections unless dsn sets
// pool_max_conns. pgx's default is the number of CPUs, at least 4. Writes
// hold their connection through the commit's fsync, and reads that queued
// behind them held up cold pulls and the cluster's lease claims: a few
// more connections let reads pass on a small host. On a large one the
// CPU count is no bound at all: three replicas of 64 CPUs would ask
// PostgreSQL for more than its default 100 connections.
func sizePool(cfg *pgxpool.Config, dsn string) {
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
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

// migrate applies the migrations the database lacks (see package
// pgmigrate: one transaction under an advisory lock, forward-only).
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	files, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return err
	}
	return pgmigrate.Set{Name: "metadata", Table: "airlock_meta_migrations", Lock: migrationLock, Files: files}.Apply(ctx, pool)
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
