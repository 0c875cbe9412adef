package alerts_test

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var testDigest = digest.FromString("an image manifest")

// request is what a receiver got.
type request struct {
	header http.Header
	body   []byte
	at     time.Time
}

// receiver is a webhook endpoint on 127.0.0.1 that records every request
// and answers with what status says for the n-th one (from 1).
type receiver struct {
	*httptest.Server
	status func(n int) int
	// hold, when set, is waited on before answering: a slow receiver.
	hold chan struct{}

	mu  sync.Mutex
	got []request
}

func newReceiver(t *testing.T, status func(n int) int) *receiver {
	t.Helper()
	rc := &receiver{status: status}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.got = append(rc.got, request{header: r.Header.Clone(), body: body, at: time.Now()})
		n := len(rc.got)
		rc.mu.Unlock()
		if rc.hold != nil {
			select {
			case <-rc.hold:
			case <-r.Context().Done():
			}
		}
		code := http.StatusNoContent
		if rc.status != nil {
			code = rc.status(n)
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, "receiver says "+http.StatusText(code))
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.got...)
}

func always(code int) func(int) int { return func(int) int { return code } }

// start runs a Deliverer until the test ends or stop is called.
func start(t *testing.T, o alerts.Options) (d *alerts.Deliverer, stop func()) {
	t.Helper()
	if o.MinBackoff == 0 {
		o.MinBackoff, o.MaxBackoff = 20*time.Millisecond, 100*time.Millisecond
	}
	if o.PollInterval == 0 {
		o.PollInterval = 50 * time.Millisecond
	}
	d = alerts.New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return d, stop
}

// eventually fails the test unless cond holds within 60 s. Deliveries
// record their outcome with one fsync each, and a loaded machine's disk
// takes tens of milliseconds per fsync at times: a backlog of a few hundred
// then takes seconds (6 s for TestBacklogBeyondOneShareDrainsWithoutPolling
// beside a large write, 0.6 s alone). A long deadline delays only a
// failure.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// counter reads airlock_alert_deliveries_total{result} or, with result "",
// airlock_alert_outbox_pending from reg.
func counter(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case result == "" && mf.GetName() == "airlock_alert_outbox_pending":
				return m.GetGauge().GetValue()
			case mf.GetName() == "airlock_alert_deliveries_total" && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == result:
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func pending(t *testing.T, s alerts.Outbox) int {
	t.Helper()
	ds, err := s.DueDeliveries(t.Context(), time.Now().Add(time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	return len(ds)
}

func quarantined(repo string) metadata.Event {
	return metadata.Event{
		Type: config.EventQuarantined, Time: time.Now().UTC().Truncate(time.Millisecond),
		Repository: repo, Digest: testDigest, From: metadata.StatePending, State: metadata.StateQuarantined,
		Reasons: []metadata.Reason{{Type: metadata.ReasonPolicy, Message: "digest not pinned for tag 1.0", Policy: "hcl-pinned", Tag: "1.0"}},
		Actor:   "policy", Tags: []string{"1.0"},
	}
}

func secretFile(t *testing.T, secret string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDeliverSigned(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{
		{URL: rc.URL + "/hook", SecretFile: secretFile(t, "s3cret\n")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	ev := quarantined("hcl/app")
	if n := queue(t, store, router, ev); n != 1 {
		t.Fatalf("queued %d deliveries, want 1", n)
	}
	reg := prometheus.NewRegistry()
	start(t, alerts.Options{Outbox: store, Router: router, Registerer: reg})
	eventually(t, "the event is delivered", func() bool { return counter(t, reg, "delivered") == 1 })

	got := rc.requests()
	if len(got) != 1 {
		t.Fatalf("receiver got %d requests, want 1", len(got))
	}
	r := got[0]
	// The secret file's trailing newline is not part of the secret.
	if sig := r.header.Get(alerts.HeaderSignature); !hmac.Equal([]byte(sig), []byte(alerts.Sign([]byte("s3cret"), r.body))) {
		t.Errorf("signature %q does not verify with the secret over the body", sig)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var body map[string]any
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.body)
	}
	for _, field := range []string{"id", "type", "time", "repository", "digest", "from", "state", "reasons", "actor", "tags", "audit"} {
		if _, ok := body[field]; !ok {
			t.Errorf("event has no %q: %s", field, r.body)
		}
	}
	var got2 metadata.Event
	if err := json.Unmarshal(r.body, &got2); err != nil {
		t.Fatal(err)
	}
	if got2.Type != ev.Type || got2.Repository != ev.Repository || got2.Digest != ev.Digest || got2.State != ev.State ||
		!got2.Time.Equal(ev.Time) || len(got2.Reasons) != 1 || got2.Reasons[0].Policy != "hcl-pinned" {
		t.Errorf("receiver got event %+v, want %+v", got2, ev)
	}
	if h := r.header.Get(alerts.HeaderEvent); h != config.EventQuarantined {
		t.Errorf("%s = %q, want %s", alerts.HeaderEvent, h, config.EventQuarantined)
	}
	if h := r.header.Get(alerts.HeaderDelivery); h == "" || h != got2.ID {
		t.Errorf("%s = %q, want the event id %q", alerts.HeaderDelivery, h, got2.ID)
	}
	if n := pending(t, store); n != 0 {
		t.Errorf("outbox holds %d deliveries after delivery, want 0", n)
	}
	eventually(t, "the pending gauge reads 0", func() bool { return counter(t, reg, "") == 0 })
}

func TestNoSignatureWithoutSecret(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: rc.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	queue(t, store, router, quarantined("hcl/app"))
	start(t, alerts.Options{Outbox: store, Router: router})
	eventually(t, "the event is delivered", func() bool { return len(rc.requests()) == 1 })
	if h, ok := rc.requests()[0].header[alerts.HeaderSignature]; ok {
		t.Errorf("unsigned webhook got %s: %q", alerts.HeaderSignature, h)
	}
}

func TestRetryUntilDelivered(t *testing.T) {
	t.Parallel()
	// Fails twice (a 500, then a 503), then takes it.
	rc := newReceiver(t, func(n int) int {
		return map[int]int{1: http.StatusInternalServerError, 2: http.StatusServiceUnavailable}[n] + map[bool]int{true: 200}[n > 2]
	})
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: rc.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	queue(t, store, router, quarantined("hcl/app"))
	reg := prometheus.NewRegistry()
	_, stop := start(t, alerts.Options{Outbox: store, Router: router, Registerer: reg,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	eventually(t, "the event is delivered", func() bool { return counter(t, reg, "delivered") == 1 })
	// Time for a duplicate to show, were there one.
	time.Sleep(300 * time.Millisecond)
	stop()
	got := rc.requests()
	if len(got) != 3 {
		t.Fatalf("receiver got %d requests, want 3 (two failures, one success)", len(got))
	}
	id := got[0].header.Get(alerts.HeaderDelivery)
	for i, r := range got {
		if r.header.Get(alerts.HeaderDelivery) != id || string(r.body) != string(got[0].body) {
			t.Errorf("attempt %d differs from the first: a retry must send the same event", i+1)
		}
	}
	// Backoff: the second failure waits at least a quarter of twice
	// MinBackoff (the jitter takes up to half).
	if gap := got[2].at.Sub(got[1].at); gap < 50*time.Millisecond {
		t.Errorf("third attempt %v after the second, want a backoff", gap)
	}
	if r := counter(t, reg, "retried"); r != 2 {
		t.Errorf("retried = %v, want 2", r)
	}
	if n := pending(t, store); n != 0 {
		t.Errorf("outbox holds %d deliveries, want 0", n)
	}
}

func TestFailuresRecordedAndGivenUp(t *testing.T) {
	t.Parallel()
	moved := newReceiver(t, nil)
	tests := []struct {
		name    string
		handler func(n int) int
		o       alerts.Options
		want    string // in the outbox's LastError after the first failure
	}{
		{"server error", always(http.StatusBadGateway), alerts.Options{}, "HTTP 502 Bad Gateway: receiver says Bad Gateway"},
		{"redirect", always(http.StatusFound), alerts.Options{}, "redirect"},
		{"timeout", always(http.StatusOK), alerts.Options{Timeout: 50 * time.Millisecond}, "no answer within 50ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rc := newReceiver(t, tt.handler)
			if tt.name == "timeout" {
				rc.hold = make(chan struct{}) // never answers in time
			}
			if tt.name == "redirect" {
				rc.Config.Handler = http.RedirectHandler(moved.URL, http.StatusFound)
			}
			router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: rc.URL + "/t?token=hidden"}}})
			if err != nil {
				t.Fatal(err)
			}
			store := openStore(t, t.TempDir())
			queue(t, store, router, quarantined("hcl/app"))
			reg := prometheus.NewRegistry()
			o := tt.o
			o.Outbox, o.Router, o.Registerer, o.MaxAttempts = store, router, reg, 3
			o.MinBackoff, o.MaxBackoff = 300*time.Millisecond, 300*time.Millisecond
			// The failure comes after this, and its retry at least half
			// of MinBackoff after the failure (the jitter takes up to
			// half). Compared with the time the outbox is read instead,
			// a slow read (fsync under load) would find the retry due.
			started := time.Now()
			start(t, o)
			eventually(t, "a failed attempt is recorded", func() bool { return counter(t, reg, "retried") >= 1 })
			ds, err := store.DueDeliveries(t.Context(), time.Now().Add(time.Hour), 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(ds) != 1 || ds[0].Attempts != 1 || !strings.Contains(ds[0].LastError, tt.want) || !ds[0].NextAttempt.After(started.Add(o.MinBackoff/2)) {
				t.Errorf("outbox after one failure: %+v, want one delivery, 1 attempt, scheduled later, error with %q", ds, tt.want)
			} else if strings.Contains(ds[0].LastError, "hidden") || strings.Contains(ds[0].LastError, rc.URL) {
				t.Errorf("the stored error %q repeats the webhook URL, which may hold a token", ds[0].LastError)
			}
			eventually(t, "the pending gauge counts it", func() bool { return counter(t, reg, "") == 1 })
			eventually(t, "the delivery is given up", func() bool { return counter(t, reg, "dropped") == 1 })
			if n := pending(t, store); n != 0 {
				t.Errorf("outbox holds %d deliveries after giving up, want 0", n)
			}
			if r := counter(t, reg, "retried"); r != 2 {
				t.Errorf("retried = %v, want 2 (the third failure drops)", r)
			}
			if rc.hold != nil {
				close(rc.hold)
			}
		})
	}
	if n := len(moved.requests()); n != 0 {
		t.Errorf("a redirect was followed %d times", n)
	}
}

func TestGiveUpOldEvents(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: rc.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	old := quarantined("hcl/old")
	old.Time = time.Now().Add(-2 * time.Hour)
	queue(t, store, router, old)
	queue(t, store, router, quarantined("hcl/new"))
	reg := prometheus.NewRegistry()
	start(t, alerts.Options{Outbox: store, Router: router, Registerer: reg, MaxAge: time.Hour})
	eventually(t, "the new event is delivered", func() bool { return counter(t, reg, "delivered") == 1 })
	eventually(t, "the old one is dropped", func() bool { return counter(t, reg, "dropped") == 1 })
	got := rc.requests()
	if len(got) != 1 || !strings.Contains(string(got[0].body), "hcl/new") {
		t.Errorf("receiver got %d requests, want only the new event", len(got))
	}
}

func TestRemovedWebhookDropped(t *testing.T) {
	t.Parallel()
	kept, removed := newReceiver(t, nil), newReceiver(t, nil)
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: kept.URL}, {URL: removed.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	if n := queue(t, store, router, quarantined("hcl/app")); n != 2 {
		t.Fatalf("queued %d, want 2", n)
	}
	// A reload removes one webhook before anything is sent.
	if err := router.SetConfig(config.Alerts{Webhooks: []config.Webhook{{URL: kept.URL}}}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	start(t, alerts.Options{Outbox: store, Router: router, Registerer: reg})
	eventually(t, "one delivered, one dropped", func() bool {
		return counter(t, reg, "delivered") == 1 && counter(t, reg, "dropped") == 1
	})
	if len(kept.requests()) != 1 || len(removed.requests()) != 0 {
		t.Errorf("kept webhook got %d, removed got %d; want 1 and 0", len(kept.requests()), len(removed.requests()))
	}
	if n := pending(t, store); n != 0 {
		t.Errorf("outbox holds %d deliveries, want 0", n)
	}
}

func TestRestartDeliversPending(t *testing.T) {
	t.Parallel()
	down := true
	var mu sync.Mutex
	rc := newReceiver(t, func(int) int {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: rc.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	store := openStore(t, dir)
	queue(t, store, router, quarantined("hcl/first"))
	reg := prometheus.NewRegistry()
	_, stop := start(t, alerts.Options{Outbox: store, Router: router, Registerer: reg,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	eventually(t, "a failed attempt", func() bool { return counter(t, reg, "retried") >= 1 })
	stop()
	// Queued while no Deliverer runs.
	queue(t, store, router, quarantined("hcl/second"))
	closeStore(t, store)

	mu.Lock()
	down = false
	mu.Unlock()
	before := len(rc.requests())
	store = openStore(t, dir)
	reg = prometheus.NewRegistry()
	start(t, alerts.Options{Outbox: store, Router: router, Registerer: reg})
	eventually(t, "both are delivered after the restart", func() bool { return counter(t, reg, "delivered") == 2 })
	got := rc.requests()[before:]
	if len(got) != 2 || !strings.Contains(string(got[0].body), "hcl/first") || !strings.Contains(string(got[1].body), "hcl/second") {
		t.Errorf("after the restart the receiver got %d requests, want hcl/first then hcl/second", len(got))
	}
}

func TestSlowWebhookDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	slow, fast := newReceiver(t, nil), newReceiver(t, nil)
	slow.hold = make(chan struct{})
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: slow.URL}, {URL: fast.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	queue(t, store, router, quarantined("hcl/one"))
	queue(t, store, router, quarantined("hcl/two"))
	reg := prometheus.NewRegistry()
	start(t, alerts.Options{Outbox: store, Router: router, Registerer: reg})
	// The slow receiver holds its first request; the fast one gets both
	// events meanwhile.
	eventually(t, "the fast webhook has both events", func() bool { return len(fast.requests()) == 2 })
	if n := len(slow.requests()); n != 1 {
		t.Errorf("slow webhook got %d requests while holding the first, want 1 (one at a time)", n)
	}
	close(slow.hold)
	eventually(t, "the slow webhook has both events", func() bool { return counter(t, reg, "delivered") == 4 })
	got := slow.requests()
	if len(got) != 2 || !strings.Contains(string(got[0].body), "hcl/one") || !strings.Contains(string(got[1].body), "hcl/two") {
		t.Errorf("slow webhook got %d requests, want hcl/one then hcl/two", len(got))
	}
}

func TestNudge(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, nil)
	router, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: rc.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	store := openStore(t, t.TempDir())
	// Polls only hourly: only Nudge can make it send soon.
	d, _ := start(t, alerts.Options{Outbox: store, Router: router, PollInterval: time.Hour})
	time.Sleep(50 * time.Millisecond) // past the first poll
	queue(t, store, router, quarantined("hcl/app"))
	start := time.Now()
	d.Nudge()
	eventually(t, "the nudged event is delivered", func() bool { return len(rc.requests()) == 1 })
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("delivery took %v after Nudge", took)
	}
}
