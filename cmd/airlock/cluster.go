package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/cluster"
	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
)

// spoolDir is where this process keeps its downloads in progress. Recover
// removes every spool there that this process does not own, so no other
// process may spool into the same directory: with a shared filesystem
// (storage.path on NFS, or several replicas on one machine in tests) each
// replica has a directory of its own, named by its peer address, which no
// two live replicas share. A replica that comes back under another
// address leaves its old directory behind (docs/operations.md).
func spoolDir(cfg *config.Config) string {
	dir := filepath.Join(cfg.Storage.Path, "spool")
	if !cfg.Cluster.SharedFilesystem {
		return dir
	}
	advertise, err := cfg.Cluster.AdvertiseURL()
	if err != nil {
		return dir // refused by the host check before serve gets here
	}
	u, err := url.Parse(advertise)
	if err != nil || u.Host == "" {
		return dir
	}
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, u.Host)
	return filepath.Join(dir, name)
}

// openCluster joins the cluster the configuration describes, on the
// metadata store's PostgreSQL pool.
func (g *gateway) openCluster(ctx context.Context) error {
	advertise, err := g.cfg.Cluster.AdvertiseURL()
	if err != nil {
		return err
	}
	c, err := cluster.Open(ctx, cluster.Options{Pool: g.pg.Pool(), Advertise: advertise,
		Logger: g.log.With(slog.String("component", "cluster")), Registerer: g.promReg})
	if err != nil {
		return err
	}
	g.cluster = c
	return nil
}

// peerServer is the peer listener's server: blobs being filled here,
// streamed to the other replicas.
func (g *gateway) peerServer() (*http.Server, net.Listener, error) {
	ln, err := net.Listen("tcp", g.cfg.Cluster.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster.listen %s: %w", g.cfg.Cluster.Listen, err)
	}
	// No WriteTimeout: a peer reads a large blob as fast as the upstream
	// delivers it to this replica.
	srv := &http.Server{Handler: g.cluster.Handler(g.proxy), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: maxHeaderBytes, ErrorLog: slog.NewLogLogger(g.log.Handler(), slog.LevelWarn)}
	return srv, ln, nil
}

// runEvictor measures the cache every cache.evictInterval and trims it
// over cache.maxSize. With several replicas on one blob store every
// replica measures (each reports the size, and its own spool), and only
// the one holding the cluster-wide "evict" lease trims: two would each
// delete down to the low water mark and evict twice what is needed. A
// replica trims with the limit only while it holds the lease.
func (g *gateway) runEvictor(ctx context.Context) {
	interval := g.cfg.Cache.EvictInterval.Std()
	if g.cluster == nil {
		g.reconcile(ctx)
		g.evictor.Run(ctx, interval)
		return
	}
	g.evictor.SetMaxBytes(0) // measure only, until the lease is held
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		reconciled := false
		g.cluster.Singleton(ctx, "evict", func(held context.Context) {
			if !reconciled {
				// One walk of the shared store records the last uses
				// a crash lost; every replica's walk would repeat it.
				g.reconcile(held)
				reconciled = held.Err() == nil
			}
			// The next sweep trims. Not Nudge: that says the volume is
			// full, and would trim below cache.maxSize.
			g.evicting.Store(true)
			g.evictor.SetMaxBytes(g.maxBytes.Load())
			<-held.Done()
			g.evictor.SetMaxBytes(0)
			g.evicting.Store(false)
		})
	}()
	g.evictor.Run(ctx, interval)
	wg.Wait()
}

// setMaxBytes applies cache.maxSize: at once where this replica trims,
// else when it takes the evictor's lease.
func (g *gateway) setMaxBytes(n int64) {
	g.maxBytes.Store(n)
	if g.cluster == nil || g.evicting.Load() {
		g.evictor.SetMaxBytes(n)
	}
}

// follower applies the changes other replicas announce to what this
// replica holds in memory outside the metadata store's own cache: the
// gate's image states, and the proxy's confirmations from an upstream
// that a reload pointed at another registry (the replica whose Reidentify
// recorded the new registry is the only one told so by the call). The
// store calls note on its listening goroutine, which must not block; run
// does the work.
type follower struct {
	log  *slog.Logger
	wake chan struct{}
	// forget drops the proxy's memory of an upstream (proxy.Forget).
	forget func(upstream string)

	mu        sync.Mutex
	pending   map[string]bool // "<repo>@<digest>" to read again
	reset     bool            // read every image again
	upstreams map[string]bool // upstream names that changed registry
}

// refreshTimeout bounds one round of reading changed images again.
const refreshTimeout = 30 * time.Second

// maxPending bounds the images waiting to be read again; past it one
// RefreshAll is cheaper than their reads, and memory stays bounded.
const maxPending = 4096

func newFollower(log *slog.Logger) *follower {
	return &follower{log: log, wake: make(chan struct{}, 1), pending: map[string]bool{}, upstreams: map[string]bool{}}
}

// note records an announcement; it is the store's subscriber.
func (f *follower) note(kind, key string) {
	switch kind {
	case "image", "reset", "upstream":
	default:
		return // content: the store's own cache follows it
	}
	f.mu.Lock()
	if kind == "upstream" {
		f.upstreams[key] = true
	} else if kind == "reset" || len(f.pending) >= maxPending {
		f.reset = true
		clear(f.pending)
	} else if !f.reset {
		f.pending[key] = true
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// run reads again what was announced, until ctx ends. A read that fails
// (the database is down) is retried every second as a RefreshAll: the
// store says "reset" once its listener is back, too.
func (f *follower) run(ctx context.Context, g *gate.Gate) {
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		}
		f.mu.Lock()
		keys, reset, upstreams := f.pending, f.reset, f.upstreams
		f.pending, f.reset, f.upstreams = map[string]bool{}, false, map[string]bool{}
		f.mu.Unlock()
		for name := range upstreams {
			if f.forget != nil {
				f.forget(name)
			}
		}
		// Bounded: Refresh holds the gate's write lock while it reads, and
		// a database that stopped answering must not hold it for as long
		// as TCP keeps trying.
		applyCtx, cancel := context.WithTimeout(ctx, refreshTimeout)
		err := f.apply(applyCtx, g, keys, reset)
		cancel()
		if err == nil {
			if failing {
				failing = false
				f.log.Info("image states of other replicas are followed again")
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if !failing {
			failing = true
			f.log.Warn("cannot read image states other replicas changed; retrying every second, and serving from memory meanwhile",
				slog.String("error", err.Error()))
		}
		f.note("reset", "")
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (f *follower) apply(ctx context.Context, g *gate.Gate, keys map[string]bool, reset bool) error {
	if reset {
		return g.RefreshAll(ctx)
	}
	for key := range keys {
		repo, ref, ok := strings.Cut(key, "@")
		d, err := digest.Parse(ref)
		if !ok || err != nil {
			f.log.Warn("ignoring an image change notice that names no image", slog.String("key", key))
			continue
		}
		if err := g.Refresh(ctx, repo, d); err != nil {
			return err
		}
	}
	return nil
}

// clusterSummary says in the start-up line whether this replica runs
// alone or which peer address it has.
func clusterSummary(c *cluster.Cluster, ln net.Listener) string {
	if c == nil {
		return "off"
	}
	return fmt.Sprintf("advertise %s, peer listener %s", c.Advertise(), ln.Addr())
}
