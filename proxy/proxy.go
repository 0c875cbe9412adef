package proxy

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/singleflight"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Registry is what the proxy needs of an upstream registry client
// (*upstream.Registry implements it).
type Registry interface {
	HeadManifest(ctx context.Context, repo, ref string, accept []string) (upstream.Descriptor, error)
	GetManifest(ctx context.Context, repo, ref string, accept []string) (upstream.Descriptor, io.ReadCloser, error)
	GetBlob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, int64, error)
	HeadBlob(ctx context.Context, repo string, d digest.Digest) (int64, error)
	Tags(ctx context.Context, repo string) ([]string, error)
	Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) ([]byte, string, bool, error)
}

// BlobStore is the content-addressed blob cache (*storage.Blobs implements it).
type BlobStore interface {
	Open(ctx context.Context, d digest.Digest) (io.ReadSeekCloser, int64, error)
	Stat(ctx context.Context, d digest.Digest) (int64, error)
	RedirectURL(r *http.Request, d digest.Digest) (string, error)
	NewSpool(d digest.Digest) (*storage.Spool, error)
	Commit(ctx context.Context, d digest.Digest, s *storage.Spool) error
	Discard(s *storage.Spool) error
}

// Metadata is the index of tags, manifests and blob references
// (*metadata.DB implements it).
type Metadata interface {
	Tag(ctx context.Context, repo, tag string) (metadata.TagRecord, error)
	PutTag(ctx context.Context, repo, tag string, rec metadata.TagRecord) error
	Tags(ctx context.Context, repo string) ([]string, error)
	// RepoManifest returns a cached manifest with the repository's link to
	// it; the record is set when only the link is missing.
	RepoManifest(ctx context.Context, repo string, d digest.Digest) (metadata.ManifestRecord, metadata.Link, error)
	PutManifest(ctx context.Context, repo string, rec metadata.ManifestRecord, link metadata.Link, admit ...metadata.BlobLink) error
	ManifestLink(ctx context.Context, repo string, d digest.Digest) (metadata.Link, error)
	LinkManifest(ctx context.Context, repo string, d digest.Digest, l metadata.Link) error
	AdmitManifest(ctx context.Context, repo string, d digest.Digest, blobs []metadata.BlobLink) error
	BlobLink(ctx context.Context, repo string, d digest.Digest) (metadata.Link, error)
	LinkBlobs(ctx context.Context, repo string, blobs ...metadata.BlobLink) error
	Touch(repo string, d digest.Digest)
}

// Subject is a manifest about to be served, as a Gate sees it.
type Subject struct {
	Upstream   string
	Repository string
	// Tag is set when the client asked by tag.
	Tag       string
	Digest    digest.Digest
	MediaType string
	Body      []byte
	// Head is set for a HEAD request: a lookup, not a pull.
	Head bool
}

// Decision is a Gate's verdict on a Subject.
type Decision struct {
	Allow bool
	// Message is the refusal as the client sees it, a whole sentence;
	// when empty, one is made from Reasons.
	Message string
	// Reasons explain a refusal to the client and in the log.
	Reasons []string
	// RetryAfter asks the client to come back later (a pending scan).
	RetryAfter time.Duration
}

// Gate decides whether a resolved manifest may be served. It is the point
// where signature and vulnerability policy plug in; a nil Gate allows all.
type Gate interface {
	Admit(ctx context.Context, s Subject) (Decision, error)
}

// Governor is implemented by a Gate that applies policy to some
// repositories only. In a governed repository a blob is served only through
// a manifest there that the gate admitted; elsewhere, once the repository's
// upstream confirmed it. A Gate that is not a Governor governs every
// repository.
type Governor interface {
	Governs(upstream, repo string) bool
}

// Rechecker is implemented by a Gate whose answers change while a pull is
// served (an admin's block, a release ending). A manifest's blobs are
// recorded as readable after the Gate allowed it; the Gate may have
// withdrawn them in between, so the proxy asks again, without deciding
// anything, once the record is written, and withdraws them itself if the
// manifest stopped being servable.
//
// Artifact reports a manifest the Gate serves without the policies' say
// (a signature artifact): its blobs are the upstream's choice, so none of
// them that a refused manifest there lists becomes readable through it.
type Rechecker interface {
	Servable(upstream, repo string, d digest.Digest) bool
	Artifact(upstream, repo string, d digest.Digest) bool
}

// Options configure a Proxy.
type Options struct {
	Router *Router
	// Registries maps each upstream's name to its client.
	Registries map[string]Registry
	// TagTTL is how long a tag mapping is trusted without asking upstream,
	// per upstream name; missing names use DefaultTagTTL.
	TagTTL        map[string]time.Duration
	DefaultTagTTL time.Duration
	Blobs         BlobStore
	Meta          Metadata
	Gate          Gate
	Logger        *slog.Logger
	Metrics       *Metrics
	// MaxManifestBytes bounds manifests read from upstreams; 0 means 4 MiB.
	MaxManifestBytes int64
	// MaxBlobBytes bounds a blob transfer whose size no admitted manifest
	// declared (schema 1 images, blobs fetched by digest alone); 0 means
	// DefaultMaxBlobBytes.
	MaxBlobBytes int64
	// FillTimeout bounds a whole upstream blob transfer as a last resort;
	// 0 means 6h. The upstream client's idle timeout catches stalls far sooner.
	FillTimeout time.Duration
	Now         func() time.Time
	// OnNoSpace is called when the cache volume is found full, not when
	// only one blob did not fit (the evictor is asked to make room); nil
	// does nothing.
	OnNoSpace func()
	// Permit, when set, is asked once a request is routed whether its
	// client may pull from that upstream; its error is the answer.
	Permit func(ctx context.Context, upstream string) error
	// User names the authenticated client of a request for its log line;
	// nil logs no user.
	User func(context.Context) (string, bool)
	// Tracer records a span per request with children for cache lookups,
	// upstream calls and fills; nil records nothing.
	Tracer trace.Tracer
	// Cluster, when set, shares fills with the other replicas of a
	// cluster: a blob is fetched from its upstream by one replica at a
	// time, and the others read that replica's fill from its peer
	// listener (serve StreamFill there). Nil is a single replica.
	Cluster Cluster
}

// Proxy is the registry API handler.
type Proxy struct {
	table   atomic.Pointer[table]
	blobs   BlobStore
	meta    Metadata
	gate    Gate
	log     *slog.Logger
	metrics *Metrics
	maxMan  int64
	fillTTL time.Duration
	maxBlob int64
	now     func() time.Time
	tracer  trace.Tracer
	user    func(context.Context) (string, bool)
	permit  func(context.Context, string) error
	cluster Cluster

	onNoSpace func()
	// full says when misses may try the cache again after the volume was
	// found full.
	full fullVolume

	fills   fillSet
	flights singleflight.Group
	// referrers keeps recent referrers answers, so a burst of pulls (every
	// node verifying one image's signatures) asks the upstream once per
	// tag TTL, and lists already seen are served while it is down.
	referrers memo[referrersAnswer]
	// narrowTags keeps what a tag resolved to for clients that take only
	// some manifest types: an answer that is not the tag's for everyone,
	// so it is kept apart from the tag records, per Accept list.
	narrowTags memo[digest.Digest]
	// confirmed holds the upstream confirmations of blobs whose links are
	// still being written, by repository and digest, with the size the
	// upstream announced.
	confirmed memo[int64]
	// storing holds manifests just fetched, by repository and digest,
	// while they are written.
	storing memo[repoManifest]
	// declaring holds the blob sizes declared by manifests in storing.
	declaring memo[int64]
	// tagging holds tag records just resolved, while they are written.
	tagging memo[metadata.TagRecord]
	// tagLocks order the writes of one tag's records (see tagLock).
	tagLocks [64]sync.Mutex

	// ctx is the parent of work detached from clients (fills, shared
	// lookups); cancel ends it at Close.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// closing guards wg.Add against Close's Wait: once closed is set no
	// new background work starts (see track).
	closing sync.Mutex
	closed  bool
	// writes bounds the metadata writes waiting in the background.
	writes chan struct{}
}

// maxBackgroundWrites bounds the metadata writes (manifests, tags, links)
// a burst of pulls may leave waiting for the volume.
const maxBackgroundWrites = 64

// tagLock returns the lock that orders the writes of the tag record under
// key: one of a fixed few, so that writes of different tags rarely wait on
// each other and memory does not grow with the tags seen.
func (p *Proxy) tagLock(key string) *sync.Mutex {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return &p.tagLocks[h.Sum32()%uint32(len(p.tagLocks))]
}

// track counts one piece of background work for Close to wait for; it
// reports false once Close began, when nothing new may start: a WaitGroup
// must not grow while it is waited on, and the metadata store is closed
// after Close returns.
func (p *Proxy) track() bool {
	p.closing.Lock()
	defer p.closing.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	return true
}

// table is everything a configuration reload replaces at once.
type table struct {
	router        *Router
	registries    map[string]Registry
	tagTTL        map[string]time.Duration
	defaultTagTTL time.Duration
}

const defaultMaxManifest = 4 << 20

// DefaultMaxBlobBytes bounds a blob of undeclared size: larger than any
// layer public registries serve, small enough that a hostile upstream
// streaming forever stops long before it fills a disk.
const DefaultMaxBlobBytes = 32 << 30

// New returns a Proxy. Close it to stop background fills.
func New(o Options) (*Proxy, error) {
	if o.Router == nil || o.Blobs == nil || o.Meta == nil {
		return nil, errors.New("proxy: Router, Blobs and Meta are required")
	}
	p := &Proxy{
		blobs:   o.Blobs,
		meta:    o.Meta,
		gate:    o.Gate,
		log:     o.Logger,
		metrics: o.Metrics,
		maxMan:  o.MaxManifestBytes,
		fillTTL: o.FillTimeout,
		maxBlob: o.MaxBlobBytes,
		now:     o.Now,
		tracer:  o.Tracer,
		user:    o.User,
		permit:  o.Permit,
		cluster: o.Cluster,

		onNoSpace: o.OnNoSpace,
	}
	if p.tracer == nil {
		p.tracer = noop.NewTracerProvider().Tracer("")
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.metrics == nil {
		p.metrics = NewMetrics(nil)
	}
	if p.maxMan <= 0 || p.maxMan > defaultMaxManifest {
		p.maxMan = defaultMaxManifest
	}
	if p.maxBlob <= 0 {
		p.maxBlob = DefaultMaxBlobBytes
	}
	if p.fillTTL <= 0 {
		p.fillTTL = 6 * time.Hour
	}
	if p.now == nil {
		p.now = time.Now
	}
	p.fills.m = map[fillKey]*fill{}
	p.referrers = memo[referrersAnswer]{max: 32 << 20, size: func(a referrersAnswer) int { return len(a.body) }}
	p.narrowTags = memo[digest.Digest]{max: 4 << 20, size: func(d digest.Digest) int { return len(d) }}
	p.confirmed = memo[int64]{max: 4 << 20, size: func(int64) int { return 8 }}
	p.declaring = memo[int64]{max: 8 << 20, size: func(int64) int { return 8 }}
	p.tagging = memo[metadata.TagRecord]{max: 4 << 20, size: func(metadata.TagRecord) int { return 128 }}
	p.storing = memo[repoManifest]{max: 64 << 20, size: func(m repoManifest) int { return len(m.rec.Body) }}
	p.writes = make(chan struct{}, maxBackgroundWrites)
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.Reload(o.Router, o.Registries, o.TagTTL, o.DefaultTagTTL)
	return p, nil
}

// Reload swaps the routing table and upstream clients. Requests in flight
// finish with the table they started with.
func (p *Proxy) Reload(rt *Router, regs map[string]Registry, ttl map[string]time.Duration, def time.Duration) {
	p.table.Store(&table{router: rt, registries: regs, tagTTL: ttl, defaultTagTTL: def})
}

// Forget drops what the proxy holds in memory on the word of an upstream:
// its confirmations, manifests and tags still being written, referrers
// lists and narrow tag answers. Call it when the name stands for another
// registry after a reload (see metadata's Reidentify).
func (p *Proxy) Forget(upstream string) {
	prefix := upstream + "/"
	p.confirmed.forgetPrefix(prefix)
	p.storing.forgetPrefix(prefix)
	p.declaring.forgetPrefix(prefix)
	p.tagging.forgetPrefix(prefix)
	p.narrowTags.forgetPrefix(prefix)
	p.referrers.forgetPrefix(prefix)
}

// Close waits for running fills and background metadata writes until ctx
// ends, then cancels the rest. No background work starts after Close.
func (p *Proxy) Close(ctx context.Context) error {
	p.closing.Lock()
	p.closed = true
	p.closing.Unlock()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		p.cancel()
		return nil
	case <-ctx.Done():
		p.cancel()
		<-done
		return ctx.Err()
	}
}

// request carries what one request resolved, for handlers and the log line.
type request struct {
	route    Route
	registry Registry
	tagTTL   time.Duration
	// cache is "hit", "miss", "stale" or "" for the log and metrics.
	cache string
}

// traceContext reads a caller's W3C traceparent so airlock's spans join it.
var traceContext = propagation.TraceContext{}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx, span := p.tracer.Start(traceContext.Extract(r.Context(), propagation.HeaderCarrier(r.Header)),
		"registry "+r.Method, trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	r = r.WithContext(ctx)
	rw := newResponseWriter(w)
	rq := &request{}
	var err error
	defer func() {
		// A transfer aborted with http.ErrAbortHandler still gets its log
		// line, metric and span status before the panic goes on to net/http.
		v := recover()
		if v != nil && err == nil {
			err = fmt.Errorf("response aborted: %v", v)
		}
		p.endSpan(span, rw, rq, err)
		if v != nil {
			p.logRequest(r, rw, rq, time.Since(start), err)
			panic(v)
		}
	}()
	err = p.serve(rw, r, rq)
	if err != nil {
		e := toError(err, CodeNotFound)
		if !rw.wroteHeader {
			writeError(rw, r, e)
		}
	}
	p.logRequest(r, rw, rq, time.Since(start), err)
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, rq *request) error {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	ep, err := ParseEndpoint(r.URL.EscapedPath())
	if err != nil {
		return err
	}
	rq.route.Endpoint = ep
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return &Error{Status: http.StatusMethodNotAllowed, Code: CodeUnsupported,
			Message: "airlock is a read-only pull-through gateway: push and delete go to the upstream registry itself"}
	}
	switch ep.Kind {
	case KindBase:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, "{}")
		}
		return nil
	case KindCatalog:
		return &Error{Status: http.StatusNotFound, Code: CodeUnsupported,
			Message: "the catalog is not served: airlock exposes only the repositories an admin allows"}
	case KindUpload:
		return &Error{Status: http.StatusMethodNotAllowed, Code: CodeUnsupported,
			Message: "airlock is a read-only pull-through gateway: push to the upstream registry itself"}
	}
	t := p.table.Load()
	route, err := t.router.Route(ep, r.URL.Query())
	rq.route = route
	if err != nil {
		return err
	}
	if p.permit != nil && !Internal(r.Context()) {
		if err := p.permit(r.Context(), route.Upstream.Name); err != nil {
			return err
		}
	}
	rq.registry = t.registries[route.Upstream.Name]
	if rq.registry == nil {
		return &Error{Status: http.StatusNotFound, Code: CodeNameUnknown, Message: "upstream " + route.Upstream.Name + " has no client"}
	}
	rq.tagTTL = t.defaultTagTTL
	if ttl, ok := t.tagTTL[route.Upstream.Name]; ok && ttl > 0 {
		rq.tagTTL = ttl
	}
	if route.Namespace != "" {
		// The distribution spec's proxying section: say which namespace
		// the request was answered for.
		w.Header().Set("OCI-Namespace", route.Namespace)
	}
	switch ep.Kind {
	case KindManifest:
		return p.serveManifest(w, r, rq)
	case KindBlob:
		return p.serveBlob(w, r, rq)
	case KindTags:
		return p.serveTags(w, r, rq)
	case KindReferrers:
		return p.serveReferrers(w, r, rq)
	}
	return errNotFoundPath(r.URL.Path)
}

// detached returns a context for work shared by several clients: it ends at
// Close or after timeout, never with the client that started it. It keeps
// the starting request's trace so the shared work shows up in it.
func (p *Proxy) detached(from context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx := trace.ContextWithSpanContext(p.ctx, trace.SpanContextFromContext(from))
	return context.WithTimeout(ctx, timeout)
}

// span starts a child span of whatever ctx carries.
func (p *Proxy) span(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return p.tracer.Start(ctx, name, trace.WithAttributes(attrs...))
}

// endSpan finishes the request span with what the request resolved.
func (p *Proxy) endSpan(span trace.Span, rw *responseWriter, rq *request, err error) {
	if !span.IsRecording() {
		return
	}
	span.SetName("registry " + rq.route.Kind.String())
	attrs := []attribute.KeyValue{attribute.Int("http.response.status_code", rw.status),
		attribute.Int64("airlock.bytes", rw.written)}
	if rq.route.Upstream != nil {
		attrs = append(attrs, attribute.String("airlock.upstream", rq.route.Upstream.Name),
			attribute.String("airlock.repository", rq.route.Repo),
			attribute.String("airlock.reference", rq.route.Reference))
	}
	if rq.cache != "" {
		attrs = append(attrs, attribute.String("airlock.cache", rq.cache))
	}
	span.SetAttributes(attrs...)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
}

// endChild ends a child span, recording err.
func endChild(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func (p *Proxy) logRequest(r *http.Request, rw *responseWriter, rq *request, d time.Duration, err error) {
	up, kind := "", rq.route.Kind.String()
	if rq.route.Upstream != nil {
		up = rq.route.Upstream.Name
	}
	p.metrics.observeRequest(up, kind, r.Method, rw.status, d)
	if rq.cache != "" && (rq.route.Kind == KindManifest || rq.route.Kind == KindBlob) {
		// Counted here, once per request, whatever path the request took.
		p.metrics.cacheResult(up, kind, rq.cache)
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", rw.status),
		slog.Int64("bytes", rw.written),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.String("kind", kind),
		slog.String("remote", r.RemoteAddr),
	}
	if up != "" {
		attrs = append(attrs, slog.String("upstream", up), slog.String("repository", rq.route.Repo))
	}
	if rq.route.Reference != "" {
		attrs = append(attrs, slog.String("reference", rq.route.Reference))
	}
	if rq.route.Namespace != "" {
		attrs = append(attrs, slog.String("ns", rq.route.Namespace))
	}
	if rq.cache != "" {
		attrs = append(attrs, slog.String("cache", rq.cache))
	}
	if p.user != nil {
		if u, ok := p.user(r.Context()); ok {
			attrs = append(attrs, slog.String("user", u))
		}
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, slog.String("user_agent", ua))
	}
	lvl := slog.LevelInfo
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
		if rw.status >= 500 || rw.status == 0 {
			// One line per failed request, loud enough to alert on.
			lvl = slog.LevelError
		}
	}
	p.log.LogAttrs(r.Context(), lvl, "request", attrs...)
}
