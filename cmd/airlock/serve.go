package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/admin/console"
	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/cluster"
	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/internal/dirlock"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/proxy/pullauth"
	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/evict"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/storage/metadata/postgres"
	"github.com/airlock-registry/airlock/verify/notation"
	"github.com/airlock-registry/airlock/verify/signature"
)

func newServeCommand() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the registry gateway",
		Long: "Run the registry gateway. Without --config it runs the embedded default: the registry API on 127.0.0.1:5000\n" +
			"(loopback only, as it has no client authentication), the admin API on 127.0.0.1:5001, Docker Hub (default),\n" +
			"gcr.io and quay.io upstreams, data in ./airlock-data.\n" +
			"SIGHUP reloads upstreams, credentials, allow-lists, the auth section, policies and their pin files, alerts and\n" +
			"their secrets, cache.tagTTL,\n" +
			"cache.maxSize, log.level and shutdown\n" +
			"from --config, and logs a warning for each changed key that needs a restart; SIGTERM drains in-flight pulls and exits.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(path)
			if err != nil {
				return err
			}
			level := new(slog.LevelVar)
			level.Set(cfg.Log.SlogLevel())
			log := newLogger(cfg.Log.Format, level, os.Stderr)
			g, err := newGateway(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			g.logLevel = level
			return g.run(cmd.Context(), path)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "configuration file (default: the embedded default)")
	return cmd
}

// newLogger writes to w in format at level, which SIGHUP may change.
func newLogger(format string, level slog.Leveler, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == config.FormatText {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// gateway is one running airlock: its stores, its proxy and its listeners.
type gateway struct {
	cfg  *config.Config
	log  *slog.Logger
	meta metaStore
	// pg is meta when it is PostgreSQL, else nil.
	pg *postgres.Store
	// cluster is this replica's membership; nil when it runs alone.
	cluster *cluster.Cluster
	// follower applies other replicas' image changes to the gate; nil
	// with bbolt.
	follower *follower
	blobs    *storage.Blobs
	proxy    *proxy.Proxy
	gate     *gate.Gate
	// alerts routes the gate's events to webhooks (reload replaces its
	// table); deliverer sends them from the outbox.
	alerts    *alerts.Router
	deliverer *alerts.Deliverer
	metrics   *proxy.Metrics
	promReg   *prometheus.Registry
	ready     atomic.Bool
	// stopTracing flushes spans at exit.
	stopTracing func(context.Context) error
	evictor     *evict.Evictor
	// maxBytes is cache.maxSize; evicting is set while this replica
	// holds the cluster's evictor lease (runEvictor).
	maxBytes atomic.Int64
	evicting atomic.Bool
	// scans is the vulnerability scanner; nil when scanning is off.
	scans *scanService

	// cfg above is what the gateway runs with: what it started with, plus
	// the shutdown settings of the last reload. loaded is the
	// configuration last read, at start or on SIGHUP. After start only run
	// and reload, on one goroutine, use either.
	loaded *config.Config
	// logLevel, when set, is the level of log; reload changes it.
	logLevel *slog.LevelVar
	// build is what airlock version prints.
	build buildInfo
	// dirLock keeps other processes off the spool directory.
	dirLock *dirlock.Lock

	// auth authenticates pulls in front of proxy; policy is the one it
	// started with (SIGHUP replaces it in auth).
	auth   *pullauth.Authenticator
	policy pullauth.Policy
}

func newGateway(ctx context.Context, cfg *config.Config, log *slog.Logger) (_ *gateway, err error) {
	g := &gateway{cfg: cfg, loaded: cfg, log: log, promReg: prometheus.NewRegistry(), build: readBuildInfo()}
	g.promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		g.build.collector())
	g.metrics = proxy.NewMetrics(g.promReg)

	if err := os.MkdirAll(cfg.Storage.Path, 0o750); err != nil {
		return nil, fmt.Errorf("storage.path %s: %w", cfg.Storage.Path, err)
	}
	// The spool directory's lock keeps a second airlock off it, and is
	// taken before Recover removes spools: they may be the live downloads
	// of an airlock already running here. bbolt's file lock did this for
	// the embedded default only; with PostgreSQL metadata two processes
	// given one storage.path (two pods on one hostPath, a copied
	// configuration) would each remove the other's downloads in progress.
	// Recover leaves a shared object store's young uploads to the replicas
	// writing them.
	spool := spoolDir(cfg)
	if g.dirLock, err = lockSpool(spool); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			g.dirLock.Release()
		}
	}()
	blobs, err := openBlobs(ctx, cfg.Storage, spool)
	if err != nil {
		return nil, err
	}
	g.blobs = blobs
	g.meta, g.pg, err = openMetadata(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			g.closeStores()
		}
	}()
	if g.pg != nil {
		// Before the gate loads the states: a change made meanwhile is
		// read again once the gate runs, not lost between the two.
		g.follower = newFollower(log.With(slog.String("component", "gate")))
		g.pg.Subscribe(g.follower.note)
	}
	if cfg.Cluster.Enabled() {
		if err := g.openCluster(ctx); err != nil {
			return nil, err
		}
	}
	if n, err := blobs.Recover(ctx); err != nil {
		return nil, fmt.Errorf("recovering the blob store: %w", err)
	} else if n > 0 {
		log.Info("removed unfinished downloads left by an earlier run", slog.Int("count", n))
	}
	// The evictor runs even without cache.maxSize, to report the size.
	g.maxBytes.Store(cfg.Cache.MaxSize.Bytes())
	g.evictor = evict.New(evict.Options{
		Blobs: blobs, Uses: g.meta, Index: g.meta, MaxBytes: cfg.Cache.MaxSize.Bytes(),
		Logger: log.With(slog.String("component", "evict")), Registerer: g.promReg,
	})
	rt, regs, ttls, err := buildUpstreams(cfg, selfAddrs(cfg), g.metrics, log)
	if err != nil {
		return nil, err
	}
	tracer, stopTracing, err := newTracer(ctx, cfg.Tracing)
	if err != nil {
		return nil, err
	}
	g.stopTracing = stopTracing
	policies, err := compilePolicies(cfg, log)
	if err != nil {
		return nil, err
	}
	if g.alerts, err = alerts.NewRouter(cfg.Alerts); err != nil {
		return nil, err
	}
	g.deliverer = alerts.New(alerts.Options{Outbox: g.meta, Router: g.alerts, UserAgent: "airlock/" + g.build.Version,
		Logger: log.With(slog.String("component", "alerts")), Registerer: g.promReg})
	// The gate withdraws and deletes content through the proxy, which asks
	// the gate before serving: content is bound once both exist.
	content := &lazyContent{}
	g.scans = newScanService(cfg, content, log.With(slog.String("component", "scanner")), g.promReg)
	if g.scans != nil {
		// claircore logs through the default logger only.
		slog.SetDefault(claircoreLogger(log))
	}
	g.gate, err = gate.New(ctx, gate.Options{Store: g.meta, Content: content, Policies: policies,
		Alerts: g.alerts, Delivered: g.deliverer.Nudge, Verify: verifySignatures(content), Scanner: gateScanner(g.scans),
		KnownRepository: content.Known, Logger: log.With(slog.String("component", "gate")), Registerer: g.promReg})
	if err != nil {
		return nil, err
	}
	po := proxy.Options{
		Gate:   g.gate,
		Tracer: tracer,
		Router: rt, Registries: regs, TagTTL: ttls, DefaultTagTTL: cfg.Cache.TagTTL.Std(),
		Blobs: blobs, Meta: g.meta, Logger: log, Metrics: g.metrics,
		MaxManifestBytes: cfg.Cache.MaxManifestBytes,
		MaxBlobBytes:     cfg.Cache.MaxBlobSize.Bytes(),
		User:             pullauth.User,
		OnNoSpace:        g.evictor.Nudge,
		// The authenticator checks restrictions before the proxy; this
		// checks them again against the upstream the proxy routed to, in
		// case a reload swapped the table in between.
		Permit: func(ctx context.Context, upstream string) error {
			if g.auth == nil || g.auth.Permitted(ctx, upstream) {
				return nil
			}
			return &proxy.Error{Status: http.StatusForbidden, Code: proxy.CodeDenied,
				Message: fmt.Sprintf("this client may not pull from upstream %q", upstream)}
		},
	}
	if g.cluster != nil {
		po.Cluster = g.cluster // a nil *Cluster would be a non-nil interface
	}
	if g.proxy, err = proxy.New(po); err != nil {
		return nil, err
	}
	content.p = g.proxy
	if g.follower != nil {
		g.follower.forget = g.proxy.Forget
	}
	if g.scans != nil {
		g.scans.result = g.gate.ScanResult
	}
	if g.policy, err = pullPolicy(cfg.Auth); err == nil {
		g.auth, err = pullauth.New(pullauth.Options{Next: g.proxy, Resolver: g.proxy, Policy: g.policy,
			Logger: log.With(slog.String("component", "pullauth")), Registerer: g.promReg})
	}
	if err != nil {
		return nil, err
	}
	if err := g.reidentify(ctx, cfg); err != nil {
		return nil, err
	}
	return g, nil
}

// closeStores closes the cluster membership and the metadata store, in
// that order (the cluster uses the store's pool).
func (g *gateway) closeStores() error {
	var errs []error
	if g.cluster != nil {
		if err := g.cluster.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if g.meta != nil {
		if err := g.meta.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing metadata: %w", err))
		}
	}
	if err := g.dirLock.Release(); err != nil {
		errs = append(errs, fmt.Errorf("releasing the spool directory's lock: %w", err))
	}
	return errors.Join(errs...)
}

// lockSpool creates the spool directory and takes its lock, which this
// process holds until it ends.
func lockSpool(dir string) (*dirlock.Lock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("storage: creating spool directory: %w", err)
	}
	l, err := dirlock.Acquire(dir)
	if errors.Is(err, dirlock.ErrHeld) {
		return nil, fmt.Errorf("storage.path: another airlock is using the spool directory %s (%w); two processes on one directory remove each other's downloads in progress: give each its own storage.path, or, on a filesystem every replica mounts, set cluster.sharedFilesystem and a distinct cluster.advertise per replica", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("storage.path: %w", err)
	}
	return l, nil
}

// reidentify tells the metadata index what each upstream name stands for.
// Where a name now points at another registry, what the previous one
// vouched for (confirmed links, tags, and the proxy's memory of them) is
// withdrawn, to be confirmed again by the registry that answers now.
func (g *gateway) reidentify(ctx context.Context, cfg *config.Config) error {
	ids := make(map[string]string, len(cfg.Upstreams))
	for _, u := range cfg.Upstreams {
		ids[u.Name] = strings.TrimRight(u.URL, "/")
	}
	changed, err := g.meta.Reidentify(ctx, ids)
	if err != nil {
		return fmt.Errorf("recording the upstreams' identities: %w", err)
	}
	for _, name := range changed {
		g.proxy.Forget(name)
		g.log.Warn("upstream now points at another registry: what the previous one confirmed is confirmed again on next use",
			slog.String("upstream", name))
	}
	return nil
}

// reconcile gives the metadata index a use of every stored blob that a
// crash left without one. It runs before the first sweep, in the
// background: listing a large store takes a while, and serving need not
// wait for it.
func (g *gateway) reconcile(ctx context.Context) {
	n, err := g.meta.Reconcile(ctx, g.blobs)
	switch {
	case err != nil && ctx.Err() == nil:
		g.log.Warn("reconciling the metadata index with the blob store failed; eviction falls back to commit times",
			slog.String("error", err.Error()))
	case n > 0:
		g.log.Info("recorded commit times of blobs the metadata index had no use of", slog.Int("count", n))
	}
}

// openBlobs builds the configured storage driver. The filesystem driver gets
// the local fast path: *os.File hits (sendfile) and commit by rename.
func openBlobs(ctx context.Context, s config.Storage, spool string) (*storage.Blobs, error) {
	params := map[string]any{}
	for k, v := range s.Parameters {
		params[k] = v
	}
	if s.Driver == "" || s.Driver == config.DriverFilesystem {
		root, _ := params["rootdirectory"].(string)
		if root == "" {
			root = filepath.Join(s.Path, "blobs")
			params["rootdirectory"] = root
		}
		d, err := filesystem.FromParameters(params)
		if err != nil {
			return nil, fmt.Errorf("storage.parameters: %w", err)
		}
		return storage.NewBlobs(d, root, spool)
	}
	var d storagedriver.StorageDriver
	d, err := factory.Create(ctx, s.Driver, params)
	if err != nil {
		return nil, fmt.Errorf("storage.driver %s: %w (check storage.parameters)", s.Driver, err)
	}
	opts := []storage.Option{storage.WithRedirects(!s.DisableRedirects)}
	if n := s.LocalCacheSize.Bytes(); n > 0 {
		// Beside the spool, on the same volume: a committed spool
		// becomes the copy by a rename.
		opts = append(opts, storage.WithLocalCache(filepath.Join(s.Path, "cache"), n))
	}
	blobs, err := storage.NewBlobs(d, "", spool, opts...)
	if err != nil {
		return nil, err
	}
	// Drivers connect lazily: without a probe, a missing bucket or an
	// unreachable endpoint would show only as a cache that never fills.
	if err := blobs.Probe(ctx); err != nil {
		return nil, fmt.Errorf("storage.driver %s: %w (check storage.parameters: the bucket must exist and "+
			"the endpoint must be reachable with these credentials)", s.Driver, err)
	}
	return blobs, nil
}

// selfAddrs are the addresses of the listeners serving cfg, which no
// redirect or token realm may lead to.
func selfAddrs(cfg *config.Config) []string {
	return []string{cfg.Listen, cfg.Admin.Listen}
}

// buildUpstreams turns the configured upstreams into the proxy's routing
// table and clients. self are airlock's own listen addresses, those of the
// listeners that run (on SIGHUP, not those of the new file: a changed
// listen address takes effect only at a restart).
func buildUpstreams(cfg *config.Config, self []string, m *proxy.Metrics, log *slog.Logger) (*proxy.Router, map[string]proxy.Registry, map[string]time.Duration, error) {
	ups := make([]proxy.Upstream, 0, len(cfg.Upstreams))
	regs := map[string]proxy.Registry{}
	ttls := map[string]time.Duration{}
	for i := range cfg.Upstreams {
		u := &cfg.Upstreams[i]
		hosts := append([]string{u.Host()}, u.Aliases...)
		library := false
		for _, h := range hosts {
			if h == "docker.io" || h == "registry-1.docker.io" || h == "index.docker.io" {
				library = true
			}
		}
		pu := proxy.Upstream{Name: u.Name, Hosts: hosts, Default: u.Default, Library: library}
		if len(u.Repositories) > 0 {
			pu.Allowed = u.Allowed
		}
		ups = append(ups, pu)
		transport, err := upstreamTransport(u)
		if err != nil {
			return nil, nil, nil, err
		}
		auth := u.Auth
		reg, err := upstream.New(upstream.Options{
			Name: u.Name, URL: u.URL, Credentials: auth.Credentials, Transport: transport,
			Logger: log.With(slog.String("upstream", u.Name)), MaxAttempts: u.Retry.MaxAttempts,
			BaseDelay: u.Retry.BaseDelay.Std(), MaxDelay: u.Retry.MaxDelay.Std(),
			IdleTimeout: u.Timeouts.Idle.Std(), HeaderTimeout: u.Timeouts.Header.Std(),
			MaxBlobTransfers: u.MaxBlobTransfers,
			Observe:          m.ObserveUpstream,
			// Redirects and token realms must never lead back into
			// airlock itself, its admin API least of all.
			InternalRedirectHosts: u.InternalRedirectHosts,
			SelfAddrs:             self,
		})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("upstreams[%d] (%s): %w", i, u.Name, err)
		}
		regs[u.Name] = reg
		ttls[u.Name] = u.TagTTL.Std()
	}
	rt, err := proxy.NewRouter(ups)
	if err != nil {
		return nil, nil, nil, err
	}
	return rt, regs, ttls, nil
}

// upstreamTransport returns nil (the upstream client's tuned default) unless
// the upstream needs its own TLS settings.
func upstreamTransport(u *config.Upstream) (http.RoundTripper, error) {
	if u.CAFile == "" && !u.InsecureSkipVerify {
		return nil, nil
	}
	tc := &tls.Config{InsecureSkipVerify: u.InsecureSkipVerify} //nolint:gosec // opted into by config, digests still verified
	if u.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(u.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %s caFile: %w", u.Name, err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream %s caFile %s holds no PEM certificate", u.Name, u.CAFile)
		}
		tc.RootCAs = pool
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tc
	t.DisableCompression = true
	t.MaxIdleConnsPerHost = 32
	t.MaxResponseHeaderBytes = upstream.MaxResponseHeaderBytes
	t.ResponseHeaderTimeout = u.Timeouts.Header.Std()
	return t, nil
}

// maxHeaderBytes bounds the request line and headers of one request on
// either listener; a larger request gets 431. Registry clients send a few
// KiB at most (a bearer token and an Accept list); http.Server's default of
// 1 MiB lets an unauthenticated client make every request expensive.
const maxHeaderBytes = 64 << 10

// run serves until ctx ends, then drains: readiness turns false, in-flight
// requests and fills finish within shutdown.drainTimeout, stores close.
func (g *gateway) run(ctx context.Context, configPath string) error {
	regLn, err := net.Listen("tcp", g.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", g.cfg.Listen, err)
	}
	adminLn, err := net.Listen("tcp", g.cfg.Admin.Listen)
	if err != nil {
		regLn.Close()
		return fmt.Errorf("admin.listen %s: %w", g.cfg.Admin.Listen, err)
	}
	regSrv := &http.Server{Handler: g.registryHandler(), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: maxHeaderBytes, ErrorLog: slog.NewLogLogger(g.log.Handler(), slog.LevelWarn)}
	adminMux, err := g.adminHandler()
	if err != nil {
		regLn.Close()
		adminLn.Close()
		return err
	}
	// Idle keep-alive connections close, so a client cannot hold the admin
	// listener's connections open; bodies have their own deadlines there.
	adminSrv := &http.Server{Handler: adminMux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: maxHeaderBytes, ErrorLog: slog.NewLogLogger(g.log.Handler(), slog.LevelWarn)}

	var peerSrv *http.Server
	var peerLn net.Listener
	if g.cluster != nil {
		if peerSrv, peerLn, err = g.peerServer(); err != nil {
			regLn.Close()
			adminLn.Close()
			return err
		}
	}

	errc := make(chan error, 3)
	go func() {
		if g.cfg.TLS.Enabled() {
			errc <- regSrv.ServeTLS(regLn, g.cfg.TLS.CertFile, g.cfg.TLS.KeyFile)
		} else {
			errc <- regSrv.Serve(regLn)
		}
	}()
	go func() { errc <- adminSrv.Serve(adminLn) }()
	if peerSrv != nil {
		go func() { errc <- peerSrv.Serve(peerLn) }()
	}
	evictCtx, stopEvict := context.WithCancel(context.WithoutCancel(ctx))
	evictDone := make(chan struct{})
	go func() {
		defer close(evictDone)
		g.runEvictor(evictCtx)
	}()
	followDone := make(chan struct{})
	go func() {
		defer close(followDone)
		if g.follower != nil {
			g.follower.run(evictCtx, g.gate)
		}
	}()
	gateDone := make(chan struct{})
	go func() {
		defer close(gateDone)
		g.gate.Run(evictCtx)
	}()
	alertsDone := make(chan struct{})
	go func() {
		defer close(alertsDone)
		g.deliverer.Run(evictCtx)
	}()
	scansDone := make(chan struct{})
	go func() {
		defer close(scansDone)
		if g.scans != nil {
			g.scans.run(evictCtx)
		}
	}()
	g.ready.Store(true)
	access, open := pullAccess(g.cfg.Auth, g.policy, regLn.Addr())
	g.log.Info("airlock serving", slog.String("version", g.build.Version), slog.String("commit", g.build.CommitLabel()),
		slog.String("registry", regLn.Addr().String()), slog.String("admin", adminLn.Addr().String()),
		slog.String("config", displayPath(configPath)), slog.Any("upstreams", upstreamSummaries(g.cfg)),
		slog.String("storage", g.cfg.Storage.Path), slog.String("metadata", g.cfg.Metadata.Driver),
		slog.String("cluster", clusterSummary(g.cluster, peerLn)), slog.String("pull_auth", access))
	logPullAccess(g.log, access, open)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var serveErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-hup:
			g.reload(configPath)
		case serveErr = <-errc:
			break loop
		}
	}

	g.ready.Store(false)
	if d := g.cfg.Shutdown.ReadyDelay.Std(); d > 0 && serveErr == nil {
		// Keep serving while whatever routes clients here notices /readyz.
		g.log.Info("shutting down: not ready, still accepting pulls", slog.String("readyDelay", d.String()))
		select {
		case <-time.After(d):
		case serveErr = <-errc:
		}
	}
	g.log.Info("shutting down: draining in-flight pulls", slog.String("drainTimeout", g.cfg.Shutdown.DrainTimeout.String()))
	drain, cancel := context.WithTimeout(context.Background(), g.cfg.Shutdown.DrainTimeout.Std())
	defer cancel()
	if err := regSrv.Shutdown(drain); err != nil {
		g.log.Warn("in-flight pulls did not finish in time; closing them", slog.String("error", err.Error()))
		regSrv.Close()
	}
	if err := g.proxy.Close(drain); err != nil {
		g.log.Warn("background downloads cancelled at shutdown; they will restart on the next pull", slog.String("error", err.Error()))
	}
	if peerSrv != nil {
		// After the proxy: peers may be reading fills it just finished.
		// Its fills are done, so what is left is a peer's read of a
		// stored blob, which it resumes elsewhere.
		if err := peerSrv.Shutdown(drain); err != nil {
			peerSrv.Close()
		}
	}
	adminSrv.Close()
	stopEvict()
	<-evictDone
	<-followDone
	<-gateDone
	<-alertsDone
	<-scansDone
	if err := g.stopTracing(drain); err != nil {
		g.log.Warn("flushing trace spans failed", slog.String("error", err.Error()))
	}
	if err := g.closeStores(); err != nil {
		return err
	}
	g.log.Info("airlock stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// upstreamSummary names an upstream in the start-up log line.
type upstreamSummary struct {
	Name string `json:"name"`
	Host string `json:"host"`
}

func upstreamSummaries(cfg *config.Config) []upstreamSummary {
	out := make([]upstreamSummary, len(cfg.Upstreams))
	for i := range cfg.Upstreams {
		out[i] = upstreamSummary{Name: cfg.Upstreams[i].Name, Host: cfg.Upstreams[i].Host()}
	}
	return out
}

// reload applies a changed configuration's upstreams, credentials,
// allow-lists, tag TTL, cache size, log level and shutdown timings. A
// configuration that does not load is refused and the running one stays.
// Other keys cannot change under a running process (listeners, storage,
// TLS, ...): each that changed is logged as needing a restart, so "reloaded"
// never hides a setting that is not in force.
func (g *gateway) reload(path string) {
	if path == "" {
		g.log.Warn("SIGHUP ignored: running the embedded default, there is no file to reload")
		return
	}
	cfg, err := loadConfig(path)
	if err != nil {
		g.log.Error("configuration reload refused; keeping the running configuration", slog.String("error", err.Error()))
		return
	}
	rt, regs, ttls, err := buildUpstreams(cfg, selfAddrs(g.cfg), g.metrics, g.log)
	if err != nil {
		g.log.Error("configuration reload refused; keeping the running configuration", slog.String("error", err.Error()))
		return
	}
	// The policies' files (pins, keys, trusted roots, trust stores) and
	// the webhook secrets are read before anything changes: one that
	// cannot be read or parsed refuses the whole reload.
	policies, err := compilePolicies(cfg, g.log)
	if err != nil {
		g.log.Error("configuration reload refused; keeping the running configuration", slog.String("error", err.Error()))
		return
	}
	nextAlerts, err := alerts.NewRouter(cfg.Alerts)
	if err != nil {
		g.log.Error("configuration reload refused; keeping the running configuration", slog.String("error", err.Error()))
		return
	}
	policy, err := pullPolicy(cfg.Auth)
	if err == nil {
		err = g.auth.SetPolicy(policy)
	}
	if err != nil {
		g.log.Error("configuration reload refused; keeping the running configuration", slog.String("error", err.Error()))
		return
	}
	if err := g.reidentify(context.Background(), cfg); err != nil {
		g.log.Error("configuration reload refused; keeping the running configuration", slog.String("error", err.Error()))
		return
	}
	g.proxy.Reload(rt, regs, ttls, cfg.Cache.TagTTL.Std())
	// Before the policies, so that what they decide again alerts the
	// webhooks now configured.
	g.alerts.Replace(nextAlerts)
	// Pin files are read again even when the configuration is unchanged:
	// editing them and sending SIGHUP is how pins are updated.
	if n, err := g.gate.SetPolicies(context.Background(), policies); err != nil {
		g.log.Error("deciding some images again under the reloaded policies failed; until a retry, every second, succeeds, those whose signatures could not be checked are pending and the others keep their state",
			slog.String("error", err.Error()))
	} else if n > 0 {
		g.log.Info("images changed state under the reloaded policies", slog.Int("images", n))
	}
	g.setMaxBytes(cfg.Cache.MaxSize.Bytes())
	if g.logLevel != nil {
		g.logLevel.Set(cfg.Log.SlogLevel())
	}

	var applied, restart []string
	for _, key := range config.Diff(g.loaded, cfg) {
		if reloadable(key) {
			applied = append(applied, key)
		}
	}
	// Against the running configuration, so that a change undone before
	// the next reload stops being reported.
	for _, key := range config.Diff(g.cfg, cfg) {
		if !reloadable(key) {
			restart = append(restart, key)
			g.log.Warn("configuration key changed but takes effect only after a restart; the running value stays",
				slog.String("key", key), slog.String("config", path))
		}
	}
	g.cfg.Shutdown = cfg.Shutdown
	g.loaded = cfg
	g.log.Info("configuration reloaded", slog.String("config", path), slog.Int("upstreams", len(cfg.Upstreams)),
		slog.Any("applied", applied), slog.Any("needsRestart", restart))
}

// reloadable reports whether reload applies a change of key to the
// running gateway (auth: its htpasswd file is re-read on every reload, changed
// or not). Everything else (listen, tls, storage, admin, log.format,
// tracing, cache.maxManifestBytes, cache.evictInterval, and any key added
// without being listed here) is read once at start.
func reloadable(key string) bool {
	for _, live := range []string{"upstreams", "auth", "cache.tagTTL", "cache.maxSize", "log.level", "shutdown", "policies", "alerts"} {
		if key == live || strings.HasPrefix(key, live+".") || strings.HasPrefix(key, live+"[") {
			return true
		}
	}
	return false
}

func (g *gateway) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.WriteString(w, "ok\n")
}

func (g *gateway) readiness(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	if !g.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "shutting down\n")
		return
	}
	_, _ = io.WriteString(w, "ready\n")
}

func (g *gateway) registryHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", g.health)
	mux.HandleFunc("GET /readyz", g.readiness)
	mux.Handle("/v2/", g.auth)
	mux.Handle("/v2", g.auth)
	return mux
}

func (g *gateway) adminHandler() (http.Handler, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", g.health)
	mux.HandleFunc("GET /readyz", g.readiness)
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.promReg, promhttp.HandlerOpts{}))
	var sboms admin.SBOMs
	if g.scans != nil {
		sboms = g.scans // left a nil interface when scanning is off
	}
	// One limit on wrong tokens for the API and the console together:
	// neither is a way around the other's.
	throttle := admin.NewThrottle(nil, g.log.With(slog.String("component", "admin")))
	api, err := admin.New(admin.Options{Store: g.meta, Decider: g.gate, Tags: g.meta, Cache: g.proxy, SBOMs: sboms,
		TokenFile: g.cfg.Admin.TokenFile, Throttle: throttle, Logger: g.log.With(slog.String("component", "admin"))})
	if err != nil {
		return nil, err
	}
	mux.Handle(admin.Prefix, api)
	ui, err := console.New(console.Options{Store: g.meta, Decider: g.gate, TokenFile: g.cfg.Admin.TokenFile, SBOMs: sboms,
		Cache: g.proxy, Manifests: g.meta, Denials: g.gate.RecentDenials, Stats: console.StatsFrom(g.promReg),
		Throttle: throttle, Logger: g.log.With(slog.String("component", "console"))})
	if err != nil {
		return nil, err
	}
	mux.Handle(console.Prefix, ui)
	return mux, nil
}

// compilePolicies reads the files cfg's policies name (pins, keys, trusted
// roots, trust stores) and compiles them.
func compilePolicies(cfg *config.Config, log *slog.Logger) (*policy.Set, error) {
	read := func(path string) ([]byte, error) { return readLimited(path, maxPinFileBytes) }
	set, err := policy.Compile(cfg.Policies, read, func(name string, c config.Signature) (policy.SignatureCheck, error) {
		o := signature.Options{Logger: log.With(slog.String("component", "signature"), slog.String("policy", name))}
		if c.Notation != nil {
			nv, err := notation.New(*c.Notation, read, notation.WithLogger(o.Logger))
			if err != nil {
				return nil, fmt.Errorf("notation: %w", err)
			}
			o.Notation = nv
		}
		return signature.New(name, c, read, o)
	})
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	return set, nil
}

// verifySignatures runs a policy's signature check on an image, reading
// its signatures through airlock's own cache.
func verifySignatures(content *lazyContent) gate.Verify {
	return func(ctx context.Context, check policy.SignatureCheck, repo string, d digest.Digest, mediaType string) (metadata.SignatureEvidence, error) {
		v, ok := check.(*signature.Verifier)
		if !ok {
			return metadata.SignatureEvidence{}, fmt.Errorf("policy signature check of type %T cannot run", check)
		}
		return v.Verify(ctx, content.p.Fetcher(repo), d, mediaType)
	}
}

// maxPinFileBytes bounds a pin file: a million pins of ~80 bytes.
const maxPinFileBytes = 100 << 20

// readLimited reads at most limit bytes of path, refusing a larger file.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}

// lazyContent lets the gate reach the proxy, which is built after it.
type lazyContent struct{ p *proxy.Proxy }

func (c *lazyContent) Withdraw(ctx context.Context, repo string, d digest.Digest, servable func(digest.Digest) bool) error {
	return c.p.Withdraw(ctx, repo, d, servable)
}

func (c *lazyContent) Admitted(ctx context.Context, repo string, d digest.Digest) bool {
	return c.p.Admitted(ctx, repo, d)
}

func (c *lazyContent) Remove(ctx context.Context, repo string, d digest.Digest) error {
	return c.p.Remove(ctx, repo, d)
}

func (c *lazyContent) Known(repo string) bool { return c.p != nil && c.p.Known(repo) }

// Manifest and Blob are the scanner's reads (scanner.Content).
func (c *lazyContent) Manifest(ctx context.Context, repo string, d digest.Digest) ([]byte, string, error) {
	return c.p.ScanContent().Manifest(ctx, repo, d)
}

func (c *lazyContent) Blob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, error) {
	return c.p.ScanContent().Blob(ctx, repo, d)
}
