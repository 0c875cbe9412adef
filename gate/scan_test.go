package gate_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// queue stands in for the scanner in these tests of the gate's side: it
// records what is queued and answers as a scanner that accepted it (or
// one whose database is down). The scanner itself, on PostgreSQL, is
// tested in package scanner and end to end in integration.
type queue struct {
	mu   sync.Mutex
	jobs []scanner.Job
	down bool
	now  func() time.Time
	// finished holds the scans the queue answers for digests it already
	// scanned.
	finished map[digest.Digest]metadata.Scan
}

func (q *queue) Enqueue(_ context.Context, j scanner.Job) (metadata.Scan, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.down {
		return metadata.Scan{}, fmt.Errorf("%w: connection refused", scanner.ErrUnavailable)
	}
	q.jobs = append(q.jobs, j)
	if sc, ok := q.finished[j.Digest]; ok {
		return sc, nil
	}
	return metadata.Scan{State: metadata.ScanQueued, Queued: q.now()}, nil
}

func (q *queue) Rescan(ctx context.Context, j scanner.Job) error {
	_, err := q.Enqueue(ctx, j)
	return err
}

func (q *queue) queued(d v1.Hash) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, j := range q.jobs {
		if j.Digest.String() == d.String() {
			n++
		}
	}
	return n
}

func (q *queue) setDown(down bool) {
	q.mu.Lock()
	q.down = down
	q.mu.Unlock()
}

// vulnHarness is the harness with one vulnerability policy over hub/*
// and hcl/*, scanned by a queue; opts change the gate's options after
// (another scanner in place of the queue, a store wrapped).
func vulnHarness(t *testing.T, up *upstreamtest.Upstream, v config.Vulnerabilities, opts ...func(*gate.Options)) (*harness, *queue) {
	t.Helper()
	return vulnHarnessIn(t, up, t.TempDir(), v, opts...)
}

// vulnHarnessIn is vulnHarness on the state in dir, as a restart finds it.
func vulnHarnessIn(t *testing.T, up *upstreamtest.Upstream, dir string, v config.Vulnerabilities, opts ...func(*gate.Options)) (*harness, *queue) {
	t.Helper()
	q := &queue{finished: map[digest.Digest]metadata.Scan{}}
	set, err := policy.Compile([]config.Policy{{Name: "no-high", Match: []string{"hub/*", "hcl/*"}, Mode: config.ModeEnforce,
		Vulnerabilities: &v}}, os.ReadFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessWith(t, up, dir, "", func(o *gate.Options) {
		o.Policies = set
		o.Scanner = q
		for _, f := range opts {
			f(o)
		}
	})
	q.now = h.clock.Now
	return h, q
}

func done(now time.Time, findings ...metadata.Finding) metadata.Scan {
	return metadata.Scan{State: metadata.ScanDone, Queued: now.Add(-time.Minute), Started: now.Add(-time.Minute),
		Finished: now, Data: "data-1", Distribution: "Debian GNU/Linux 12 (bookworm)", Packages: 100, Findings: findings}
}

var openssl = metadata.Finding{ID: "CVE-2024-5535", Package: "openssl", Installed: "3.0.11-1~deb12u2", Fixed: "3.0.14-1~deb12u1",
	Severity: metadata.SeverityHigh, Link: "https://security-tracker.debian.org/tracker/CVE-2024-5535"}

// eventually polls cond until it holds, and fails the test with cond's
// account of what it last saw if it does not within five seconds: results
// and records are handed over in the background.
func (h *harness) eventually(cond func() (ok bool, saw string)) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, saw := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatal(saw)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitState waits for the record of repo@d to reach st (a result handed
// over in the background).
func (h *harness) waitState(repo string, d v1.Hash, st metadata.State) metadata.Image {
	h.t.Helper()
	var img metadata.Image
	h.eventually(func() (bool, string) {
		var err error
		img, err = h.meta.Image(h.t.Context(), repo, digest.Digest(d.String()))
		return err == nil && img.State == st, fmt.Sprintf("%s@%s: state %s (%v), want %s", repo, d, img.State, err, st)
	})
	return img
}

// waitScan waits for the record of repo@d to carry a scan in state st.
func (h *harness) waitScan(repo string, d v1.Hash, st string) metadata.Image {
	h.t.Helper()
	var img metadata.Image
	h.eventually(func() (bool, string) {
		var err error
		img, err = h.meta.Image(h.t.Context(), repo, digest.Digest(d.String()))
		return err == nil && img.Scan != nil && img.Scan.State == st, fmt.Sprintf("%s@%s: scan %+v (%v), want %s", repo, d, img.Scan, err, st)
	})
	return img
}

// waitStatus waits for GET path to answer want (a change is recorded
// before memory and the content follow it).
func (h *harness) waitStatus(path string, want int, contains ...string) {
	h.t.Helper()
	h.eventually(func() (bool, string) {
		status, body := h.get(path)
		ok := status == want
		for _, c := range contains {
			ok = ok && strings.Contains(body, c)
		}
		return ok, fmt.Sprintf("GET %s = %d %s, want %d with %q", path, status, trim(body), want, contains)
	})
}

// runGate runs h's background work until the test ends.
func runGate(t *testing.T, h *harness) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { h.gate.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestScanDecidesTheImage(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	vuln := up.PushImage(t, "vendor/app", "1.0", 512, 2)
	clean := up.PushImage(t, "vendor/app", "1.1", 512, 2)
	h, q := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "high", Unscanned: config.UnscannedDeny})
	const repo = "hub/vendor/app"
	ctx := t.Context()
	now := h.clock.Now()

	// First pull: queued once, refused with a message that says so and
	// when to come back; the layers are not readable meanwhile.
	for range 2 {
		h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "queued for a vulnerability scan", "retry shortly")
	}
	if n := q.queued(vuln.Digest); n != 1 {
		t.Fatalf("the image was queued %d times, want 1", n)
	}
	h.wantStatus(blobPath(repo, vuln.Layers[0]), http.StatusForbidden, "DENIED")
	if img := h.image(repo, vuln.Digest); img.State != metadata.StatePending || img.Scan == nil || img.Scan.State != metadata.ScanQueued {
		t.Fatalf("queued image: %+v", img)
	}

	d := digest.Digest(vuln.Digest.String())
	h.gate.ScanResult(ctx, d, metadata.Scan{State: metadata.ScanRunning, Queued: now, Started: now})
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "being scanned for vulnerabilities")

	// The result quarantines it: the refusal names the CVE and the
	// command that shows all of them.
	h.gate.ScanResult(ctx, d, done(now, openssl))
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "DENIED", "is quarantined", "CVE-2024-5535",
		"airlock images show "+repo+"@"+vuln.Digest.String())
	img := h.image(repo, vuln.Digest)
	if img.State != metadata.StateQuarantined || len(img.Reasons) != 1 {
		t.Fatalf("vulnerable image: %+v", img)
	}
	r := img.Reasons[0]
	if r.Type != metadata.ReasonVulnerability || r.ID != "CVE-2024-5535" || r.Package != "openssl" ||
		r.Installed != openssl.Installed || r.Fixed != openssl.Fixed || r.Severity != metadata.SeverityHigh || r.Policy != "no-high" {
		t.Fatalf("reason: %+v", r)
	}

	// A clean scan approves the other; its layers become readable.
	h.wantStatus(manifestPath(repo, "1.1"), http.StatusForbidden, "queued")
	h.gate.ScanResult(ctx, digest.Digest(clean.Digest.String()), done(now))
	h.wantStatus(manifestPath(repo, "1.1"), http.StatusOK)
	h.wantStatus(blobPath(repo, clean.Layers[0]), http.StatusOK)

	// New vulnerability data: the approved image is matched again and
	// quarantined; its layers are withdrawn, and an audit record says
	// the scanner decided it.
	h.gate.ScanResult(ctx, digest.Digest(clean.Digest.String()), done(now.Add(time.Hour), openssl))
	h.wantStatus(manifestPath(repo, "1.1"), http.StatusForbidden, "CVE-2024-5535")
	h.wantStatus(blobPath(repo, clean.Layers[0]), http.StatusForbidden, "DENIED")
	var decided bool
	for _, rec := range h.audit() {
		if rec.Digest.String() == clean.Digest.String() && rec.Actor == "scanner" && rec.To == metadata.StateQuarantined {
			decided = true
		}
	}
	if !decided {
		t.Fatal("no audit record of the scanner quarantining the approved image")
	}

	// The same content in another repository (the same registry under
	// its other name) is decided by the scan it already has, without
	// queuing another.
	h.wantStatus(manifestPath("hcl/vendor/app", "1.1"), http.StatusForbidden, "CVE-2024-5535")
	if img := h.image("hcl/vendor/app", clean.Digest); img.State != metadata.StateQuarantined {
		t.Fatalf("the copy in another repository: %s", img.State)
	}
	if n := q.queued(clean.Digest); n != 1 {
		t.Fatalf("the digest was queued %d times across repositories, want 1", n)
	}
}

func TestScanUnscannedAllowAndWaivers(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	a := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	h, _ := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "high", Unscanned: config.UnscannedAllow,
		Allow: []config.Waiver{{ID: "CVE-2024-5535", Until: "2026-12-01", Reason: "not reachable"}}})
	const repo = "hub/vendor/app"
	ctx := t.Context()
	now := h.clock.Now()

	// Served while the first scan runs.
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	h.wantStatus(blobPath(repo, a.Layers[0]), http.StatusOK)

	// The finding is waived through 1 December: served, and the verdict
	// says when it changes by itself.
	h.gate.ScanResult(ctx, digest.Digest(a.Digest.String()), done(now, openssl))
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	img := h.image(repo, a.Digest)
	if img.State != metadata.StateApproved || len(img.Verdict.Waived) != 1 || img.Verdict.Waived[0].ID != "CVE-2024-5535" ||
		!img.Verdict.Recheck.Equal(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("waived image: state %s, waived %+v, recheck %s", img.State, img.Verdict.Waived, img.Verdict.Recheck)
	}
	if n := h.gate.Recheck(ctx); n != 0 {
		t.Fatalf("Recheck before the waiver ended changed %d images", n)
	}
	// The waiver ends: quarantined, without a pull or a new scan.
	h.clock.advance(36 * time.Hour)
	if n := h.gate.Recheck(ctx); n != 1 {
		t.Fatalf("Recheck after the waiver ended changed %d images, want 1", n)
	}
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "is quarantined", "CVE-2024-5535")
	h.wantStatus(blobPath(repo, a.Layers[0]), http.StatusForbidden, "DENIED")
}

func TestScanPlatformsOneByOne(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "vendor/multi", "2.0", 512, 1)
	h, q := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "critical"})
	const repo = "hub/vendor/multi"
	ctx := t.Context()
	amd, _ := idx.Image("amd64")
	arm, _ := idx.Image("arm64")

	// The index itself is not scanned.
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	if q.queued(idx.Digest) != 0 {
		t.Fatal("an index was queued for scanning")
	}
	// Each platform is, when pulled.
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusForbidden, "queued")
	if q.queued(amd.Digest) != 1 || q.queued(arm.Digest) != 0 {
		t.Fatalf("queued: amd64 %d, arm64 %d; want 1, 0", q.queued(amd.Digest), q.queued(arm.Digest))
	}
	img := h.image(repo, amd.Digest)
	if img.Index.String() != idx.Digest.String() {
		t.Fatalf("platform record names index %q, want %s", img.Index, idx.Digest)
	}
	crit := openssl
	crit.Severity = metadata.SeverityCritical
	h.gate.ScanResult(ctx, digest.Digest(amd.Digest.String()), done(h.clock.Now()))
	h.gate.ScanResult(ctx, digest.Digest(arm.Digest.String()), done(h.clock.Now(), crit))
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, amd.Layers[0]), http.StatusOK)
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "is quarantined", "CVE-2024-5535")
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden)

	// A block of the index stops its clean platform too.
	if _, err := h.gate.Block(ctx, repo, digest.Digest(idx.Digest.String()), "admin:alice", "withdrawn by vendor"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusForbidden, "is a platform of", "blocked")
}

func TestScannerDownHoldsNewImagesOnly(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	old := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	fresh := up.PushImage(t, "vendor/app", "2.0", 512, 1)
	h, q := vulnHarness(t, up, config.Vulnerabilities{BlockSeverity: "high"})
	const repo = "hub/vendor/app"
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "queued")
	h.gate.ScanResult(t.Context(), digest.Digest(old.Digest.String()), done(h.clock.Now()))
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)

	q.setDown(true)
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	h.wantStatus(blobPath(repo, old.Layers[0]), http.StatusOK)
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusForbidden, "could not be queued", "scanner is unavailable")
	if img := h.image(repo, fresh.Digest); img.State != metadata.StatePending || img.Scan != nil {
		t.Fatalf("image held while the scanner is down: %+v", img)
	}

	// Back: the next pull's refusal asks for the scan in the background.
	q.setDown(false)
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusForbidden)
	h.eventually(func() (bool, string) {
		return q.queued(fresh.Digest) != 0, "the held image was not queued once the scanner was back"
	})
	img := h.waitScan(repo, fresh.Digest, metadata.ScanQueued)
	if img.State != metadata.StatePending {
		t.Fatalf("queued image: %s", img.State)
	}
}

// TestScanResultLostInACrashIsFetched: the scanner reports a result once,
// to the process that scanned; one that finished as airlock went down
// leaves the record "scanning". After the restart the gate asks the
// scanner how stale scans stand and decides the image.
func TestScanResultLostInACrashIsFetched(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	a := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	dir := t.TempDir()
	v := config.Vulnerabilities{BlockSeverity: "high"}
	h, _ := vulnHarnessIn(t, up, dir, v)
	const repo = "hub/vendor/app"
	d := digest.Digest(a.Digest.String())
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "queued")
	h.gate.ScanResult(t.Context(), d, metadata.Scan{State: metadata.ScanRunning, Queued: h.clock.Now(), Started: h.clock.Now()})
	h.close()

	h2, q := vulnHarnessIn(t, up, dir, v)
	q.finished[d] = done(h2.clock.Now(), openssl)
	if img := h2.image(repo, a.Digest); img.Scan == nil || img.Scan.State != metadata.ScanRunning {
		t.Fatalf("record after the restart: %+v", img.Scan)
	}
	h2.clock.advance(3 * time.Minute)
	runGate(t, h2)
	img := h2.waitState(repo, a.Digest, metadata.StateQuarantined)
	if img.Scan == nil || img.Scan.State != metadata.ScanDone || len(img.Reasons) != 1 || img.Reasons[0].ID != "CVE-2024-5535" {
		t.Fatalf("image after the lost result was fetched: %+v", img)
	}
	// The gate puts the decision in memory just after the store has it.
	h2.eventually(func() (bool, string) {
		got, body := h2.get(manifestPath(repo, "1.0"))
		return got == http.StatusForbidden && strings.Contains(body, "is quarantined") && strings.Contains(body, "CVE-2024-5535"),
			fmt.Sprintf("%d %s", got, trim(body))
	})
}

// TestReloadMovesAWaiversEnd: a reload that shortens a waiver still in
// force changes neither the state nor the reasons, only when the verdict
// changes by itself; that end must be the new one.
func TestReloadMovesAWaiversEnd(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	a := up.PushImage(t, "vendor/app", "1.0", 512, 1)
	v := config.Vulnerabilities{BlockSeverity: "high",
		Allow: []config.Waiver{{ID: "CVE-2024-5535", Until: "2027-06-30", Reason: "not reachable"}}}
	h, _ := vulnHarness(t, up, v)
	const repo = "hub/vendor/app"
	ctx := t.Context()
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "queued")
	h.gate.ScanResult(ctx, digest.Digest(a.Digest.String()), done(h.clock.Now(), openssl))
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)

	v.Allow[0].Until = "2026-12-01"
	set, err := policy.Compile([]config.Policy{{Name: "no-high", Match: []string{"hub/*", "hcl/*"}, Mode: config.ModeEnforce,
		Vulnerabilities: &v}}, os.ReadFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.gate.SetPolicies(ctx, set); err != nil {
		t.Fatal(err)
	}
	if img := h.image(repo, a.Digest); !img.Verdict.Recheck.Equal(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("recheck after the reload: %s, want the new end", img.Verdict.Recheck)
	}
	h.clock.advance(48 * time.Hour)
	if n := h.gate.Recheck(ctx); n != 1 {
		t.Fatalf("Recheck after the shortened waiver ended changed %d images, want 1", n)
	}
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "is quarantined")
}
