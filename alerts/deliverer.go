package alerts

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Defaults of Options.
const (
	DefaultTimeout      = 10 * time.Second
	DefaultPollInterval = 5 * time.Second
	DefaultMinBackoff   = 2 * time.Second
	DefaultMaxBackoff   = 10 * time.Minute
	DefaultMaxAge       = 24 * time.Hour
	DefaultMaxAttempts  = 200
)

// scanLimit bounds the deliveries one poll reads: the most the bbolt
// store answers at once. The outbox is read whole each poll (it is empty
// or nearly so while receivers answer), so that a receiver with a backlog
// cannot hide the others' events behind its own; from an outbox that
// bounds each target's share (fairOutbox) that holds beyond scanLimit
// pending deliveries too. The pending gauge stops at what one read holds.
const scanLimit = 1000

// fairOutbox is an Outbox that can bound each target's share of one read
// (*metadata.DB is one). With it, a receiver down long enough to have more
// than scanLimit pending deliveries no longer hides the others' behind its
// own: each target gets an equal share of the read.
type fairOutbox interface {
	DueDeliveriesPerTarget(ctx context.Context, now time.Time, perTarget, limit int) ([]metadata.Delivery, error)
}

// scanHorizon is how far ahead a poll looks to count what is pending:
// further than any retry is ever scheduled.
const scanHorizon = 365 * 24 * time.Hour

// storeTimeout bounds an outbox write made after a request ended, on a
// context that outlives Run's, so that a 2xx received during shutdown is
// still recorded and not sent again after the restart.
const storeTimeout = 5 * time.Second

// Outbox is the store's queue of deliveries; metadata.ImageStore
// implementations have it.
type Outbox interface {
	// DueDeliveries returns up to limit deliveries whose NextAttempt is
	// not after now, oldest first.
	DueDeliveries(ctx context.Context, now time.Time, limit int) ([]metadata.Delivery, error)
	// Delivered removes a delivery from the outbox.
	Delivered(ctx context.Context, seq uint64) error
	// RetryDelivery records a failed attempt and when to try again.
	RetryDelivery(ctx context.Context, seq uint64, next time.Time, lastErr string) error
}

// Options configure a Deliverer. Outbox and Router are required.
type Options struct {
	Outbox Outbox
	// Router says which webhooks are configured and their secrets; the
	// Deliverer follows its SetConfig.
	Router *Router
	// Transport makes the requests. Nil means a clone of
	// http.DefaultTransport (which honours HTTPS_PROXY). Redirects are
	// never followed, whatever it is.
	Transport http.RoundTripper
	// Timeout bounds one request, connection to last byte. Default 10s.
	Timeout time.Duration
	// PollInterval is how often the outbox is read when nothing calls
	// Nudge. Default 5s.
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before a failed delivery
	// is tried again: MinBackoff doubled per failure, at most MaxBackoff,
	// less up to half of it at random so that receivers coming back are
	// not met by every airlock at once. Defaults 2s and 10m.
	MinBackoff, MaxBackoff time.Duration
	// MaxAge gives up a delivery whose event is older than this. Default
	// 24h.
	MaxAge time.Duration
	// MaxAttempts gives up a delivery after this many failed attempts.
	// Default 200, which MaxAge reaches first with the default backoff.
	MaxAttempts int
	// Logger receives a line per failure (WARN) and per delivery given up
	// (ERROR). Nil discards them.
	Logger *slog.Logger
	// Registerer receives the metrics. Nil leaves them unregistered.
	Registerer prometheus.Registerer
	// UserAgent is sent with each request. Default "airlock".
	UserAgent string
}

// Deliverer sends the outbox's deliveries to their webhooks. Run does the
// work; the other methods are safe to call from any goroutine.
type Deliverer struct {
	outbox Outbox
	router *Router
	client *http.Client
	// ownTransport: the transport is the one New made, whose idle
	// connections Run closes when it returns.
	ownTransport bool
	o            Options
	log          *slog.Logger
	metrics      metrics
	nudged       chan struct{}
	userAgent    string

	wg sync.WaitGroup // workers

	mu sync.Mutex
	// inflight are the deliveries handed to a worker and not yet
	// recorded as delivered or retried; a poll skips them.
	inflight map[uint64]bool
	// finished are the deliveries whose outcome a worker recorded since
	// the current poll began. The poll's read may predate that write and
	// still show them due; without this they would be sent twice.
	finished map[uint64]bool
	targets  map[string]*target
}

// target is one webhook's worker state.
type target struct {
	url     string
	queue   []metadata.Delivery
	running bool
	// holdUntil keeps a failing receiver's other deliveries waiting until
	// the failed one is retried.
	holdUntil time.Time
	// failures counts consecutive failures, so that the backoff grows per
	// receiver even when the oldest delivery changes.
	failures int
	// more is set when the last read held a full share of t's
	// deliveries: others wait in the outbox.
	more bool
}

// New returns a Deliverer with o's defaults filled in, and registers its
// metrics on o.Registerer.
func New(o Options) *Deliverer {
	o.Timeout = cmp.Or(o.Timeout, DefaultTimeout)
	o.PollInterval = cmp.Or(o.PollInterval, DefaultPollInterval)
	o.MinBackoff = cmp.Or(o.MinBackoff, DefaultMinBackoff)
	o.MaxBackoff = max(cmp.Or(o.MaxBackoff, DefaultMaxBackoff), o.MinBackoff)
	o.MaxAge = cmp.Or(o.MaxAge, DefaultMaxAge)
	o.MaxAttempts = cmp.Or(o.MaxAttempts, DefaultMaxAttempts)
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rt := o.Transport
	own := rt == nil
	if own {
		rt = http.DefaultTransport.(*http.Transport).Clone()
	}
	return &Deliverer{
		outbox: o.Outbox,
		router: o.Router,
		client: &http.Client{
			Transport: rt,
			// A redirect is answered as it is: a failure. Following it
			// would send the event, and its signature, to an address
			// nobody configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		ownTransport: own,
		o:            o,
		log:          log,
		metrics:      newMetrics(o.Registerer, log),
		nudged:       make(chan struct{}, 1),
		userAgent:    cmp.Or(o.UserAgent, "airlock"),
		inflight:     map[uint64]bool{},
		finished:     map[uint64]bool{},
		targets:      map[string]*target{},
	}
}

// Nudge makes Run read the outbox now instead of at the next poll: call it
// after a change that queued deliveries, so that they go out within
// milliseconds. It never blocks; nudges while one is pending are one.
func (d *Deliverer) Nudge() {
	select {
	case d.nudged <- struct{}{}:
	default:
	}
}

// Run delivers until ctx ends, reading the outbox at once, then every
// PollInterval and when nudged. It returns once every request in progress
// has ended and its outcome is recorded, so the store may be closed then.
// Call it once.
func (d *Deliverer) Run(ctx context.Context) {
	if d.ownTransport {
		defer d.client.CloseIdleConnections()
	}
	defer d.wg.Wait()
	t := time.NewTicker(d.o.PollInterval)
	defer t.Stop()
	for {
		d.poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.nudged:
		}
	}
}

// poll reads the outbox, drops what can no longer be delivered and hands
// the rest to the targets' workers.
func (d *Deliverer) poll(ctx context.Context) {
	d.mu.Lock()
	clear(d.finished)
	d.mu.Unlock()
	now := time.Now()
	var (
		all       []metadata.Delivery
		err       error
		perTarget int
	)
	if fo, ok := d.outbox.(fairOutbox); ok {
		// One share more than there are webhooks: deliveries of removed
		// ones are dropped a share per poll.
		perTarget = max(1, scanLimit/(d.router.len()+1))
		all, err = fo.DueDeliveriesPerTarget(ctx, now.Add(scanHorizon), perTarget, scanLimit)
	} else {
		all, err = d.outbox.DueDeliveries(ctx, now.Add(scanHorizon), scanLimit)
	}
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("reading the alert outbox failed; trying again at the next poll", slog.String("error", err.Error()))
		}
		return
	}
	pending := len(all)
	// Seq order is event order; each target's worker sends in it, and a
	// target's events wait while its oldest is scheduled for a retry, so
	// a receiver sees them in order, across restarts too.
	slices.SortFunc(all, func(a, b metadata.Delivery) int { return cmp.Compare(a.Seq, b.Seq) })
	// A target whose share of the read was full has more waiting: its
	// worker asks for another read once it sent these, not a poll later.
	full := map[string]bool{}
	if perTarget > 0 {
		shares := map[string]int{}
		for _, del := range all {
			shares[del.Target]++
			full[del.Target] = shares[del.Target] >= perTarget
		}
	}
	waiting := map[string]bool{}
	for _, del := range all {
		d.mu.Lock()
		skip := d.inflight[del.Seq] || d.finished[del.Seq]
		d.mu.Unlock()
		if skip || waiting[del.Target] {
			continue
		}
		h, ok := d.router.webhook(del.Target)
		switch {
		case !ok:
			d.drop(ctx, del, "its webhook is no longer configured", "")
			pending--
		case d.tooOld(del, now):
			d.drop(ctx, del, "its event is older than the retry limit", h.name)
			pending--
		case del.NextAttempt.After(now):
			waiting[del.Target] = true
		default:
			d.dispatch(ctx, del, now, full[del.Target])
		}
	}
	d.metrics.pending.Set(float64(pending))
}

// tooOld reports whether del's event is past MaxAge. An event without a
// time has only MaxAttempts to bound it.
func (d *Deliverer) tooOld(del metadata.Delivery, now time.Time) bool {
	return !del.Event.Time.IsZero() && now.Sub(del.Event.Time) >= d.o.MaxAge
}

// dispatch queues del on its target's worker, starting the worker if it is
// idle, unless the target is waiting out a failure.
func (d *Deliverer) dispatch(ctx context.Context, del metadata.Delivery, now time.Time, more bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.targets[del.Target]
	if t == nil {
		t = &target{url: del.Target}
		d.targets[del.Target] = t
	}
	if now.Before(t.holdUntil) {
		return
	}
	d.inflight[del.Seq] = true
	t.queue = append(t.queue, del)
	t.more = t.more || more
	if !t.running {
		t.running = true
		d.wg.Add(1)
		go d.work(ctx, t)
	}
}

// work sends t's queue in order until it is empty or a delivery fails;
// after a failure the rest of the queue waits for the retry.
func (d *Deliverer) work(ctx context.Context, t *target) {
	defer d.wg.Done()
	for {
		d.mu.Lock()
		if len(t.queue) == 0 || ctx.Err() != nil {
			more := t.more && len(t.queue) == 0
			d.release(t)
			d.mu.Unlock()
			if more {
				d.Nudge()
			}
			return
		}
		del := t.queue[0]
		t.queue = t.queue[1:]
		failures := t.failures
		d.mu.Unlock()

		next, failed := d.deliver(ctx, del, failures)

		d.mu.Lock()
		delete(d.inflight, del.Seq)
		d.finished[del.Seq] = true
		if failed {
			t.failures++
			t.holdUntil = next
			d.release(t)
			d.mu.Unlock()
			return
		}
		t.failures = 0
		d.mu.Unlock()
	}
}

// release gives t's queued deliveries back to the outbox, where the next
// poll finds them, and marks t idle. d.mu is held.
func (d *Deliverer) release(t *target) {
	for _, q := range t.queue {
		delete(d.inflight, q.Seq)
	}
	t.queue = nil
	t.running = false
	t.more = false
}

// deliver makes one attempt at del and records its outcome in the outbox.
// failed reports that the receiver did not take it; next is then when it
// is tried again (zero if it was given up).
func (d *Deliverer) deliver(ctx context.Context, del metadata.Delivery, failures int) (next time.Time, failed bool) {
	h, ok := d.router.webhook(del.Target)
	if !ok {
		// Removed by a reload since the poll.
		d.drop(ctx, del, "its webhook is no longer configured", "")
		return time.Time{}, false
	}
	start := time.Now()
	err := d.post(ctx, h, del)
	if err != nil && ctx.Err() != nil {
		// Shutting down: not the receiver's failure. The delivery stays
		// due and goes out after the restart.
		return time.Time{}, true
	}
	// The outcome is recorded even if ctx ends meanwhile: a 2xx not
	// recorded is sent again after a restart.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	if err == nil {
		if serr := d.outbox.Delivered(sctx, del.Seq); serr != nil {
			d.log.Error("recording an alert delivery failed; it will be sent again", d.attrs(h.name, del,
				slog.String("error", serr.Error()))...)
		}
		d.metrics.deliveries.WithLabelValues(resultDelivered).Inc()
		return time.Time{}, false
	}
	attempts := del.Attempts + 1
	now := time.Now()
	if attempts >= d.o.MaxAttempts || d.tooOld(del, now) {
		d.drop(sctx, del, "it failed "+itoa(attempts)+" times, the last: "+err.Error(), h.name)
		return now.Add(d.backoff(max(del.Attempts, failures))), true
	}
	next = now.Add(d.backoff(max(del.Attempts, failures)))
	d.log.Warn("alert delivery failed; retrying", d.attrs(h.name, del,
		slog.Int("attempt", attempts), slog.Duration("took", now.Sub(start)),
		slog.Time("next", next), slog.String("error", err.Error()))...)
	if serr := d.outbox.RetryDelivery(sctx, del.Seq, next, err.Error()); serr != nil {
		d.log.Error("recording a failed alert delivery failed", d.attrs(h.name, del, slog.String("error", serr.Error()))...)
	}
	d.metrics.deliveries.WithLabelValues(resultRetried).Inc()
	return next, true
}

// drop gives del up: removes it from the outbox, logs why and counts it.
func (d *Deliverer) drop(ctx context.Context, del metadata.Delivery, why, name string) {
	if name == "" {
		name = "a removed webhook"
	}
	d.log.Error("alert delivery dropped: "+why, d.attrs(name, del)...)
	if err := d.outbox.Delivered(ctx, del.Seq); err != nil && !errors.Is(err, storage.ErrNotFound) {
		d.log.Error("removing a dropped alert delivery failed", d.attrs(name, del, slog.String("error", err.Error()))...)
		return
	}
	d.metrics.deliveries.WithLabelValues(resultDropped).Inc()
}

// backoff is the wait after a delivery's failures-th consecutive failure
// (counting from 0): MinBackoff doubled per failure up to MaxBackoff, less
// up to half at random.
func (d *Deliverer) backoff(failures int) time.Duration {
	b := d.o.MinBackoff
	for i := 0; i < failures && b < d.o.MaxBackoff; i++ {
		b *= 2
	}
	b = min(b, d.o.MaxBackoff)
	return b - rand.N(b/2+1)
}

func (d *Deliverer) attrs(webhook string, del metadata.Delivery, more ...any) []any {
	return append([]any{slog.String("webhook", webhook), slog.String("event", del.Event.Type),
		slog.String("id", del.Event.ID), slog.Uint64("seq", del.Seq),
		slog.String("repository", del.Event.Repository), slog.String("digest", del.Event.Digest.String())}, more...)
}
