package scanner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/quay/claircore/datastore/postgres"
	"github.com/quay/claircore/datastore/postgres/migrations"
	"github.com/quay/claircore/datastore/postgres/types"
	"github.com/quay/claircore/indexer"
	"github.com/quay/claircore/libindex"
	"github.com/quay/claircore/libvuln"
	"github.com/quay/claircore/libvuln/updates"

	"github.com/airlock-registry/airlock/config"
)

// Defaults of config.Scanner.
const (
	DefaultConcurrency = 2
	DefaultAttempts    = 5
	DefaultTimeout     = 30 * time.Minute
	DefaultInterval    = 6 * time.Hour
)

// updateRetention is how many update operations per updater the matcher
// store keeps: the re-check diffs the newest against the one before it,
// and a little slack covers updates that land while no scanner runs.
const updateRetention = 3

// Scanner scans manifests in the background. Open one per process; it is
// safe for concurrent use.
type Scanner struct {
	opts    Options
	cfg     config.Scanner // with defaults filled in
	log     *slog.Logger
	now     func() time.Time
	pool    *pgxpool.Pool
	locker  *locks
	index   *libindex.Libindex
	vuln    *libvuln.Libvuln
	updates *updates.Manager // nil without updater sets
	// updateFailures collects what an updater run's factories failed at.
	updateFailures failures
	arena          *arena
	metrics        *metrics
	owner          string // names this process's leases
	claims         atomic.Int64
	tune           tuning

	// wake nudges idle workers: a job was queued by this process, or a
	// notification says another queued one.
	wake chan struct{}
	// recheck nudges the re-check loop: vulnerability data changed.
	recheck chan struct{}

	mu      sync.Mutex
	running bool
	stop    context.CancelFunc // ends Run; set while it runs
	runDone chan struct{}
	closed  bool
}

// tuning holds the timings of the queue; tests shorten them.
type tuning struct {
	lease     time.Duration // a claimed job's lease
	heartbeat time.Duration // how often a worker renews it
	poll      time.Duration // how often idle workers look for work
	backoff   time.Duration // first retry delay; doubles per attempt
	maxDelay  time.Duration // cap of the retry delay
	dataPoll  time.Duration // how often vulnerability data is checked
	stats     time.Duration // how often queue depth is measured
	reachable time.Duration // bound of a call that only needs the database
}

func defaultTuning() tuning {
	return tuning{
		lease:     2 * time.Minute,
		heartbeat: 20 * time.Second,
		poll:      5 * time.Second,
		backoff:   10 * time.Second,
		maxDelay:  10 * time.Minute,
		dataPoll:  30 * time.Second,
		stats:     15 * time.Second,
		reachable: 10 * time.Second,
	}
}

// Open connects to the scanner's database, applies claircore's migrations
// and airlock's own (each under an advisory lock, so replicas starting
// together apply them once), and builds the indexer and matcher. It does
// not start scanning: Run does. An unreachable database is an error that
// wraps ErrUnavailable; the caller may retry.
func Open(ctx context.Context, opts Options) (*Scanner, error) {
	cfg := withDefaults(opts.Config)
	if opts.Content == nil {
		return nil, errors.New("scanner: Options.Content is required: it is where layers are read")
	}
	dsn, err := databaseDSN(cfg)
	if err != nil {
		return nil, err
	}
	s := &Scanner{
		opts:    opts,
		cfg:     cfg,
		log:     opts.Logger,
		now:     opts.Now,
		owner:   newOwner(),
		tune:    defaultTuning(),
		wake:    make(chan struct{}, 1),
		recheck: make(chan struct{}, 1),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.opts.Client == nil {
		s.opts.Client = &http.Client{}
	}
	s.metrics = newMetrics()

	s.pool, err = connect(ctx, dsn, cfg.Concurrency)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.closeParts(context.WithoutCancel(ctx))
		}
	}()
	if err := migrate(ctx, s.pool); err != nil {
		return nil, err
	}
	// The locks hold a connection of their own, outside the pool, for as
	// long as the scanner runs.
	s.locker, err = newLocks(ctx, s.pool.Config().ConnConfig.Copy(), s.log)
	if err != nil {
		return nil, fmt.Errorf("scanner: starting the database locker: %w", unavailable(err))
	}
	workDir := cfg.WorkDir
	if workDir == "" {
		workDir = opts.WorkDir
	}
	if workDir == "" {
		workDir = filepath.Join(os.TempDir(), "airlock-scan")
	}
	s.arena, err = newArena(workDir, opts.Content, s.metrics)
	if err != nil {
		return nil, err
	}
	if s.index, err = s.newIndexer(ctx); err != nil {
		return nil, err
	}
	if s.vuln, err = s.newMatcher(ctx); err != nil {
		return nil, err
	}
	if len(cfg.Updaters.Sets) > 0 {
		if s.updates, err = s.newUpdates(ctx); err != nil {
			return nil, err
		}
	}
	// Registered last: a failed Open leaves the registry as it was.
	if err := s.metrics.register(opts.Registerer); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func withDefaults(c config.Scanner) config.Scanner {
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Attempts <= 0 {
		c.Attempts = DefaultAttempts
	}
	if c.Timeout <= 0 {
		c.Timeout = config.Duration(DefaultTimeout)
	}
	if c.Updaters.Interval <= 0 {
		c.Updaters.Interval = config.Duration(DefaultInterval)
	}
	return c
}

// databaseDSN returns the connection string the configuration names.
func databaseDSN(c config.Scanner) (string, error) {
	switch {
	case c.Database != "" && c.DatabaseFile != "":
		return "", errors.New("scanner: set database or databaseFile, not both")
	case c.Database != "":
		return c.Database, nil
	case c.DatabaseFile != "":
		b, err := os.ReadFile(c.DatabaseFile)
		if err != nil {
			return "", fmt.Errorf("scanner: reading databaseFile: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		if line = strings.TrimSpace(line); line == "" {
			return "", fmt.Errorf("scanner: databaseFile %s is empty: write the connection string on its first line", c.DatabaseFile)
		}
		return line, nil
	}
	return "", errors.New("scanner: no database: set scanner.database (or scanner.databaseFile) to a PostgreSQL connection string")
}

// connect builds the pool every part shares: claircore's stores, the
// locker, the queue.
func connect(ctx context.Context, dsn string, concurrency int) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message can quote the DSN, password included.
		return nil, errors.New("scanner: the database connection string does not parse: write a postgres:// URL or a key=value DSN")
	}
	if !strings.Contains(dsn, "pool_max_conns") {
		// The listener holds one connection for good; a worker uses a few
		// while indexing (layers in parallel).
		pc.MaxConns = int32(max(10, 4*concurrency+4))
	}
	if pc.ConnConfig.ConnectTimeout == 0 {
		// Bound how long a call waits for a database that is gone.
		pc.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	if _, ok := pc.ConnConfig.RuntimeParams["application_name"]; !ok {
		pc.ConnConfig.RuntimeParams["application_name"] = "airlock-scanner"
	}
	pc.AfterConnect = types.ConnectRegisterTypes
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("scanner: %w", unavailable(err))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("scanner: connecting to the database: %w", unavailable(err))
	}
	return pool, nil
}

// migrate applies claircore's indexer and matcher migrations and airlock's
// own.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	cc := pool.Config().ConnConfig
	if err := migrations.Indexer(ctx, cc); err != nil {
		return fmt.Errorf("scanner: indexer migrations: %w", unavailable(err))
	}
	if err := migrations.Matcher(ctx, cc); err != nil {
		return fmt.Errorf("scanner: matcher migrations: %w", unavailable(err))
	}
	// The migrations may have added types: connections made before them
	// lack the codecs.
	pool.Reset()
	if err := migrateQueue(ctx, pool); err != nil {
		return fmt.Errorf("scanner: queue migrations: %w", unavailable(err))
	}
	return nil
}

// noCloseStore keeps libindex from closing the shared pool: the Scanner
// closes it last.
type noCloseStore struct{ indexer.Store }

func (noCloseStore) Close(context.Context) error { return nil }

func (s *Scanner) newIndexer(ctx context.Context) (*libindex.Libindex, error) {
	mapping, err := s.rhelMapping()
	if err != nil {
		return nil, err
	}
	opts := &libindex.Options{
		Store:      noCloseStore{postgres.NewIndexerStore(s.pool)},
		Locker:     s.locker,
		FetchArena: s.arena,
		// Scans are queued one manifest per worker; a few layers of each
		// in parallel are enough on small machines.
		LayerScanConcurrency: 4,
	}
	opts.ScannerConfig.Package = map[string]func(any) error{
		// Java's scanner asks a Maven search API about jars it cannot
		// name: never.
		"java": jsonConfig(`{"disable_api": true}`),
		// Red Hat's container scanner fetches its mapping file unless
		// given one.
		"rhel_containerscanner": jsonConfig(fmt.Sprintf(`{"name2repos_mapping_file": %q}`, mapping.name2repos)),
	}
	opts.ScannerConfig.Repo = map[string]func(any) error{
		"rhel-repository-scanner": jsonConfig(fmt.Sprintf(`{"repo2cpe_mapping_file": %q, "disable_api": true}`, mapping.repo2cpe)),
	}
	idx, err := libindex.New(ctx, opts, refusingClient(s.metrics, s.log))
	if err != nil {
		return nil, fmt.Errorf("scanner: starting the indexer: %w", unavailable(err))
	}
	return idx, nil
}

func (s *Scanner) newMatcher(ctx context.Context) (*libvuln.Libvuln, error) {
	v, err := libvuln.New(ctx, &libvuln.Options{
		Store:  postgres.NewMatcherStore(s.pool),
		Locker: s.locker,
		// The updaters run in newUpdates' manager, on airlock's own
		// schedule: libvuln runs none.
		UpdaterSets:              []string{},
		DisableBackgroundUpdates: true,
		UpdateRetention:          updateRetention,
		Client:                   s.opts.Client,
	})
	if err != nil {
		return nil, fmt.Errorf("scanner: starting the matcher: %w", unavailable(err))
	}
	return v, nil
}

// Ready reports whether the scanner's database answers.
func (s *Scanner) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.tune.reachable)
	defer cancel()
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("scanner: %w", unavailable(err))
	}
	return nil
}

// Close stops Run if it runs, waits for it, and releases the database.
// Jobs this process held go back to the queue.
func (s *Scanner) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	stop, done := s.stop, s.runDone
	s.mu.Unlock()
	if stop != nil {
		stop()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("scanner: closing: waiting for the workers: %w", ctx.Err())
		}
	}
	return s.closeParts(ctx)
}

// closeParts releases what Open built. libindex and libvuln close the
// locks too (a second Close does nothing), and libindex the arena.
func (s *Scanner) closeParts(ctx context.Context) error {
	var errs []error
	if s.locker != nil {
		errs = append(errs, s.locker.Close(ctx))
	}
	if s.vuln != nil {
		errs = append(errs, s.vuln.Close(ctx))
	}
	if s.index != nil {
		errs = append(errs, s.index.Close(ctx))
	} else if s.arena != nil {
		errs = append(errs, s.arena.Close(ctx))
	}
	if s.pool != nil {
		s.pool.Close()
	}
	return errors.Join(errs...)
}

// unavailable marks errors that mean the database could not be reached
// (a refused or lost connection, a timeout) as ErrUnavailable. Other
// errors (a failing query, a constraint) pass unchanged.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	if isUnreachable(err) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

func isUnreachable(err error) bool {
	var ne net.Error
	var ce *pgconn.ConnectError
	switch {
	case errors.As(err, &ce), errors.As(err, &ne):
		return true
	case errors.Is(err, context.DeadlineExceeded):
		return true
	case pgconn.SafeToRetry(err), pgconn.Timeout(err):
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Class 08: connection exceptions; 57P0x: the server is shutting
		// down or cannot accept connections.
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P")
	}
	msg := err.Error()
	return strings.Contains(msg, "closed pool") || strings.Contains(msg, "conn closed") ||
		strings.Contains(msg, "unexpected EOF")
}
