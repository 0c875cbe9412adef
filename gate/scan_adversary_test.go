package gate_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// book is a scanner as the queue in PostgreSQL behaves across processes:
// the scans it records outlive the gate, and a result may be recorded
// without reaching this gate (another replica's worker or re-check did
// the work, or airlock stopped between the record and the report).
type book struct {
	mu    sync.Mutex
	scans map[digest.Digest]metadata.Scan
	now   func() time.Time
	// during, when set, runs inside Enqueue after the job is recorded,
	// as the scanner's workers run meanwhile.
	during func(d digest.Digest)
}

func (b *book) Enqueue(_ context.Context, j scanner.Job) (metadata.Scan, error) {
	b.mu.Lock()
	sc, ok := b.scans[j.Digest]
	if !ok {
		sc = metadata.Scan{State: metadata.ScanQueued, Queued: b.now()}
		b.scans[j.Digest] = sc
	}
	during := b.during
	b.mu.Unlock()
	if !ok && during != nil {
		during(j.Digest)
	}
	return sc, nil
}

func (b *book) Rescan(ctx context.Context, j scanner.Job) error { return nil }

// Scans is what the gate asks the scanner for results it may have missed.
func (b *book) Scans(_ context.Context, ds []digest.Digest) (map[digest.Digest]metadata.Scan, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[digest.Digest]metadata.Scan{}
	for _, d := range ds {
		if sc, ok := b.scans[d]; ok {
			out[d] = sc
		}
	}
	return out, nil
}

func (b *book) record(d digest.Digest, sc metadata.Scan) {
	b.mu.Lock()
	b.scans[d] = sc
	b.mu.Unlock()
}

// bookHarness is vulnHarnessIn scanned by b in place of the queue.
func bookHarness(t *testing.T, up *upstreamtest.Upstream, dir string, b *book) *harness {
	t.Helper()
	h, _ := vulnHarnessIn(t, up, dir, config.Vulnerabilities{BlockSeverity: "high"}, func(o *gate.Options) { o.Scanner = b })
	b.now = h.clock.Now
	return h
}

// TestScanResultsRecordedElsewhereReachTheGate: a scan's result is
// recorded in the scanner's database, but this gate was never told
// (airlock stopped between the two, or another replica scanned it). After
// a restart the pending image must get its result, and an approved image
// whose scan was matched again against new data (elsewhere) must be
// decided on the new result.
func TestScanResultsRecordedElsewhereReachTheGate(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	waiting := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	approved := up.PushImage(t, "vendor/app", "2.0", 512, 1)
	dir := t.TempDir()
	b := &book{scans: map[digest.Digest]metadata.Scan{}}
	h := bookHarness(t, up, dir, b)
	const repo = "hub/vendor/app"
	wd, ad := digest.Digest(waiting.Digest.String()), digest.Digest(approved.Digest.String())

	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "queued for a vulnerability scan")
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusForbidden, "queued for a vulnerability scan")
	h.gate.ScanResult(t.Context(), ad, done(h.clock.Now()))
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)

	// Recorded, never reported to this gate.
	h.clock.advance(time.Minute)
	b.record(wd, done(h.clock.Now()))
	rechecked := done(h.clock.Now(), openssl)
	s := h.image(repo, approved.Digest).Scan
	if s == nil {
		t.Fatal("the approved image has no scan")
	}
	rechecked.Queued, rechecked.Started, rechecked.Finished = s.Queued, s.Started, s.Finished
	rechecked.Data = "data-2"
	b.record(ad, rechecked)
	h.close()

	h2 := bookHarness(t, up, dir, b)
	runGate(t, h2)
	h2.waitState(repo, waiting.Digest, metadata.StateApproved)
	h2.waitStatus(manifestPath(repo, "1.0"), http.StatusOK)
	h2.waitState(repo, approved.Digest, metadata.StateQuarantined)
	h2.waitStatus(manifestPath(repo, "2.0"), http.StatusForbidden, "CVE-2024-5535")
	h2.waitStatus(blobPath(repo, approved.Layers[0]), http.StatusForbidden, "DENIED")
}

// TestStaleScanReportLosesToNewer: the scanner's worker reports a
// finished scan while the gate is still handling Enqueue's answer
// (queued). The older report must not undo the newer: the image would
// wait for a scan that is over, with nothing left to tell the gate.
func TestStaleScanReportLosesToNewer(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	b := &book{scans: map[digest.Digest]metadata.Scan{}}
	h := bookHarness(t, up, t.TempDir(), b)
	const repo = "hub/vendor/app"
	d := digest.Digest(app.Digest.String())

	// Queued by the pull; a worker finishes it before the gate records
	// Enqueue's answer.
	b.during = func(d digest.Digest) {
		h.clock.advance(time.Second)
		sc := done(h.clock.Now())
		b.record(d, sc)
		h.gate.ScanResult(context.Background(), d, sc)
	}
	h.get(manifestPath(repo, "1.0"))
	h.waitState(repo, app.Digest, metadata.StateApproved)
	// Enqueue's answer, or the scanner's report of the queued job, comes
	// in after the result.
	h.gate.ScanResult(t.Context(), d, metadata.Scan{State: metadata.ScanQueued, Queued: h.clock.Now().Add(-time.Second)})
	h.waitState(repo, app.Digest, metadata.StateApproved)
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
}

// TestInternalReadDoesNotAdmitAnUnscannedPlatform: while verifying
// signatures airlock reads, by digest, what the upstream's referrers list
// names. A hostile upstream names a platform of an approved index there:
// that read must not admit the platform's layers, which a client could
// then fetch by digest before any scan.
func TestInternalReadDoesNotAdmitAnUnscannedPlatform(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "vendor/multi", "2.0", 512, 1)
	h, q := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "high"})
	const repo = "hub/vendor/multi"
	amd, _ := idx.Image("amd64")
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)

	// What the verifier does with a referrer that names the platform.
	_, _, _, err := h.proxy.Fetcher(repo).Manifest(t.Context(), amd.Digest.String())
	if err == nil {
		t.Error("airlock's own read of an unscanned platform was served")
	} else if !strings.Contains(err.Error(), "reads only signatures") {
		t.Errorf("refused for the wrong reason: %v", err)
	}
	h.wantStatus(blobPath(repo, amd.Layers[0]), http.StatusForbidden, "DENIED")
	if n := q.queued(amd.Digest); n != 0 {
		t.Errorf("airlock's own read queued the platform %d times", n)
	}
	// A client's pull of it is scanned as ever.
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusForbidden, "queued for a vulnerability scan")
	h.wantStatus(blobPath(repo, amd.Layers[0]), http.StatusForbidden, "DENIED")
}

// TestReleaseHoldsThroughNewFindings: an admin released an image
// quarantined for one CVE; new vulnerability data finds a worse one. The
// release is of the digest until it ends, so it holds, but the new
// finding must show: in the image's reasons and in the audit log, which
// is where the one who released it looks.
func TestReleaseHoldsThroughNewFindings(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	h, _ := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "high"})
	const repo = "hub/vendor/app"
	ctx := t.Context()
	d := digest.Digest(app.Digest.String())
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "queued")
	h.gate.ScanResult(ctx, d, done(h.clock.Now(), openssl))
	if _, err := h.gate.Release(ctx, repo, d, "admin:ann", "not reachable", h.clock.Now().Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	before := len(h.audit())

	worse := metadata.Finding{ID: "CVE-2025-0001", Package: "glibc", Installed: "2.36-9", Fixed: "2.36-10",
		Severity: metadata.SeverityCritical}
	h.clock.advance(time.Hour)
	rematched := done(h.clock.Now(), openssl, worse)
	rematched.Data = "data-2"
	h.gate.ScanResult(ctx, d, rematched)

	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	img := h.image(repo, app.Digest)
	if img.State != metadata.StateReleased {
		t.Fatalf("state %s, want the release to hold", img.State)
	}
	var named bool
	for _, r := range img.Reasons {
		named = named || r.ID == "CVE-2025-0001"
	}
	if !named {
		t.Fatalf("the new finding is not among the reasons: %+v", img.Reasons)
	}
	recs := h.audit()
	if len(recs) == before {
		t.Fatal("no audit record of the new finding on the released image")
	}
	last := recs[len(recs)-1]
	if last.Actor != "scanner" || last.Digest != d || !strings.Contains(fmt.Sprint(last.Reasons), "CVE-2025-0001") {
		t.Fatalf("audit record %+v does not show the scanner's new finding", last)
	}
}

// TestPlatformQuarantinedOnNewDataLosesItsLayers: a platform approved by
// its scan and served with its approved index is quarantined when new data
// matches it: its layers go, though the index stays servable.
func TestPlatformQuarantinedOnNewDataLosesItsLayers(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "vendor/multi", "2.0", 512, 1)
	h, _ := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "high"})
	const repo = "hub/vendor/multi"
	ctx := t.Context()
	amd, _ := idx.Image("amd64")
	d := digest.Digest(amd.Digest.String())
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusForbidden, "queued")
	h.gate.ScanResult(ctx, d, done(h.clock.Now()))
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, amd.Layers[0]), http.StatusOK)

	h.gate.ScanResult(ctx, d, done(h.clock.Now().Add(time.Hour), openssl))
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusForbidden, "CVE-2024-5535")
	h.wantStatus(blobPath(repo, amd.Layers[0]), http.StatusForbidden, "DENIED")
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
}

// flakyStore fails the image updates while fail is set.
type flakyStore struct {
	gate.Store
	mu   sync.Mutex
	fail bool
}

func (s *flakyStore) UpdateImage(ctx context.Context, repo string, d digest.Digest, now time.Time, fn func(img *metadata.Image) (metadata.Change, error)) (metadata.Image, error) {
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	if fail {
		return metadata.Image{}, errors.New("no space left on device")
	}
	return s.Store.UpdateImage(ctx, repo, d, now, fn)
}

func (s *flakyStore) setFail(v bool) {
	s.mu.Lock()
	s.fail = v
	s.mu.Unlock()
}

// TestFailedRecordOfAResultIsRetried: the store could not record the
// result that quarantines an approved image (a full volume). The image
// must not stay approved until some later result happens to come: the
// gate catches up from the scanner's record.
func TestFailedRecordOfAResultIsRetried(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	b := &book{scans: map[digest.Digest]metadata.Scan{}}
	var store *flakyStore
	h, _ := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "high"}, func(o *gate.Options) {
		store = &flakyStore{Store: o.Store}
		o.Store = store
		o.Scanner = b
	})
	b.now = h.clock.Now
	const repo = "hub/vendor/app"
	d := digest.Digest(app.Digest.String())
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "queued")
	clean := done(h.clock.Now())
	b.record(d, clean)
	h.gate.ScanResult(t.Context(), d, clean)
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)

	rematched := clean
	rematched.Findings, rematched.Data = []metadata.Finding{openssl}, "data-2"
	b.record(d, rematched)
	store.setFail(true)
	h.gate.ScanResult(t.Context(), d, rematched)
	store.setFail(false)
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK) // not recorded: unchanged

	runGate(t, h)
	h.waitState(repo, app.Digest, metadata.StateQuarantined)
	h.waitStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "CVE-2024-5535")
}

// rescanReporter is a scanner whose Rescan reports the new queued scan as
// the scanner does (through OnResult, before Rescan returns).
type rescanReporter struct {
	gate.Scanner
	h *harness
}

func (r *rescanReporter) Rescan(ctx context.Context, j scanner.Job) error {
	r.h.gate.ScanResult(ctx, j.Digest, metadata.Scan{State: metadata.ScanQueued, Queued: r.h.clock.Now()})
	return nil
}

// TestRescanKeepsTheStateUntilItsResult: Gate.Rescan promises that the
// image keeps the state its last scan gave it until the new result. The
// scanner reports the rescan as queued at once; an approved image must
// not turn pending, its layers withdrawn, for as long as the scan takes.
func TestRescanKeepsTheStateUntilItsResult(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	r := &rescanReporter{}
	h, _ := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "high"}, func(o *gate.Options) {
		r.Scanner = o.Scanner
		o.Scanner = r
	})
	r.h = h
	const repo = "hub/vendor/app"
	ctx := t.Context()
	d := digest.Digest(app.Digest.String())
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "queued")
	h.gate.ScanResult(ctx, d, done(h.clock.Now()))
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)

	h.clock.advance(time.Minute)
	if _, err := h.gate.Rescan(ctx, repo, d, "admin:ann"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	h.wantStatus(blobPath(repo, app.Layers[0]), http.StatusOK)

	// The new result decides.
	h.clock.advance(time.Minute)
	h.gate.ScanResult(ctx, d, done(h.clock.Now(), openssl))
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "CVE-2024-5535")
}
