package cluster

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/internal/pgmigrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// DefaultLeaseTTL is how long a lease outlives its owner's last renewal:
// the longest a replica's death can hold up the blobs it was fetching.
const DefaultLeaseTTL = 10 * time.Second

// DefaultConnectTimeout bounds connecting to a peer: a replica that cannot
// reach the peer in that time fetches the blob itself.
const DefaultConnectTimeout = time.Second

// Options configure a Cluster.
type Options struct {
	// Pool is the database the replicas share (the metadata store's pool).
	// Required.
	Pool *pgxpool.Pool
	// Advertise is this replica's peer listener as the other replicas
	// reach it: "http://10.0.0.12:5002". Required, and each replica's
	// own: a fill lease names its holder by it, and a replica takes over
	// a lease held at its own address as its dead predecessor's. Never a
	// Service address that all the replicas share.
	Advertise string
	// LeaseTTL is how long a fill's or a singleton's lease lasts without
	// a renewal; leases are renewed every LeaseTTL/3. 0 means
	// DefaultLeaseTTL.
	LeaseTTL time.Duration
	// ConnectTimeout bounds connecting to a peer; 0 means
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Logger receives lease losses and peer fallbacks; nil discards them.
	Logger *slog.Logger
	// Registerer receives the cluster's metrics; nil keeps them
	// unregistered.
	Registerer prometheus.Registerer
}

// Cluster is this replica's membership in a cluster of airlock replicas.
// It is safe for concurrent use.
type Cluster struct {
	pool      *pgxpool.Pool
	advertise string
	ttl       time.Duration
	log       *slog.Logger
	metrics   *metrics
	// owner names this process in lease rows: a new one at every Open, so
	// that a restarted replica never mistakes its predecessor's leases,
	// which no one renews, for its own.
	owner string
	// secret is what peers present to the peer listener.
	secret string
	client *http.Client

	mu sync.Mutex
	// held are the fill leases this replica holds, by key, shared by its
	// local fills of the same blob.
	held map[fillKey]*lease

	// ctx ends at Close and stops every heartbeat.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Open joins the cluster: it applies the cluster's migrations, reads (or,
// on the first replica ever, creates) the peer secret and names this
// process.
func Open(ctx context.Context, o Options) (*Cluster, error) {
	if o.Pool == nil {
		return nil, errors.New("cluster: a PostgreSQL pool is required (metadata.driver: postgres)")
	}
	u, err := url.Parse(o.Advertise)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("cluster: advertise %q must be this replica's peer listener as its peers reach it, such as http://10.0.0.12:5002", o.Advertise)
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := migrate(ctx, o.Pool); err != nil {
		return nil, err
	}
	secret, err := setting(ctx, o.Pool, "peer_secret")
	if err != nil {
		return nil, err
	}
	owner, err := randomHex(16)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		pool:      o.Pool,
		advertise: strings.TrimSuffix(o.Advertise, "/"),
		ttl:       o.LeaseTTL,
		log:       log,
		metrics:   newMetrics(o.Registerer),
		owner:     owner,
		secret:    secret,
		held:      map[fillKey]*lease{},
		client:    peerClient(o.ConnectTimeout),
	}
	if _, err := o.Pool.Exec(ctx, sweepFills, sweepAfter.Milliseconds()); err != nil {
		return nil, fmt.Errorf("cluster: sweeping ended fill leases: %w", err)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.sweep()
	return c, nil
}

// peerClient reaches peers: a short connect timeout, so that a partition
// costs a replica a second before it fetches a blob itself, and no
// overall timeout, since a peer streams a blob as fast as its upstream
// sends it. A stream that stalls is cut by the watch on the peer's lease
// (see watchPeer), not by a timer.
func peerClient(connect time.Duration) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: connect, KeepAlive: 15 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			// Blobs are compressed already; asking for gzip would only cost
			// the peer CPU and lose sendfile.
			DisableCompression: true,
			// A peer answers with a few short headers; whatever answers at
			// its address with megabytes of them is not one.
			MaxResponseHeaderBytes: peerHeaderMax,
		},
		// A peer answers itself or not at all.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// peerHeaderMax bounds the headers of a peer's answer.
const peerHeaderMax = 64 << 10

// Advertise is this replica's peer address, as its peers see it.
func (c *Cluster) Advertise() string { return c.advertise }

// Close stops renewing this replica's leases and gives up those it still
// holds, so that peers need not wait for them to expire. Close the proxy
// first: its fills end by releasing their leases.
func (c *Cluster) Close() error {
	c.cancel()
	c.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err1 := c.pool.Exec(ctx, giveUpFill, c.owner)
	_, err2 := c.pool.Exec(ctx, "DELETE FROM airlock_cluster_singletons WHERE owner LIKE $1 || '/%'", c.owner)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("cluster: giving up this replica's leases (they expire within %s): %w", c.ttl, err)
	}
	c.client.CloseIdleConnections()
	return nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("cluster: reading random bytes: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// setting reads a cluster setting, creating it with a random value if it
// is missing: the first replica to ask decides it for all.
func setting(ctx context.Context, pool *pgxpool.Pool, name string) (string, error) {
	v, err := randomHex(32)
	if err != nil {
		return "", err
	}
	err = pool.QueryRow(ctx, `INSERT INTO airlock_cluster_settings (name, value) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING value`, name, v).Scan(&v)
	if err != nil {
		return "", fmt.Errorf("cluster: reading the %s setting: %w", name, err)
	}
	if v == "" {
		return "", fmt.Errorf("cluster: the %s setting is empty: delete its row in airlock_cluster_settings for a new one", name)
	}
	return v, nil
}

// migrationLock is the advisory lock key that serialises the cluster's
// migrations ("airc"), apart from the metadata store's.
const migrationLock = 0x61697263

// migrate applies the migrations the database lacks (see package
// pgmigrate: one transaction under an advisory lock, forward-only).
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	files, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return err
	}
	return pgmigrate.Set{Name: "cluster", Table: "airlock_cluster_migrations", Lock: migrationLock, Files: files}.Apply(ctx, pool)
}
