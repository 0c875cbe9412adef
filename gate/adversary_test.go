package gate_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// A block on one platform of an index wins over the index's approval: the
// platform pulled by digest is refused and its layers stop being readable,
// although the index that lists it is still served.
func TestBlockedPlatformOfApprovedIndex(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "vendor/multi", "2.0", 256, 1)
	h := newHarness(t, up, t.TempDir(), idx.Digest.String()+"\n")
	const repo = "hcl/vendor/multi"
	arm, _ := idx.Image("arm64")

	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusOK)

	if _, err := h.gate.Block(t.Context(), repo, digest.Digest(arm.Digest.String()), "admin:bob", "arm64 build is bad"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "is blocked", "arm64 build is bad")
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden, "DENIED")
	// The index itself, and its other platform, are still served.
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	amd, _ := idx.Image("amd64")
	h.wantStatus(manifestPath(repo, amd.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, amd.Layers[0]), http.StatusOK)
}

// An index blocked before anyone pulled it still holds its platforms once
// it is seen: the refused pull of the index records what it lists.
func TestIndexBlockedBeforeFirstPullHoldsItsPlatforms(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "team/multi", "1", 256, 1)
	h := newHarness(t, up, t.TempDir(), "")
	const repo = "hub/team/multi"
	arm, _ := idx.Image("arm64")

	if _, err := h.gate.Block(t.Context(), repo, digest.Digest(idx.Digest.String()), "admin:bob", "known bad release"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, idx.Digest.String()), http.StatusForbidden, "is blocked")
	if img := h.image(repo, idx.Digest); len(img.Platforms) != 2 {
		t.Fatalf("the refused index's platforms were not recorded: %+v", img.Platforms)
	}
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "is a platform of", "blocked")
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden, "DENIED")
	h.wantStatus(manifestPath(repo, "1"), http.StatusForbidden, "is blocked")
}

// blockAfterAdmit is the gate, but the first time it allows want it blocks
// it before answering: the block lands between the proxy's decision and
// its recording of the manifest's blobs, as an admin's block can while a
// first pull is being served.
type blockAfterAdmit struct {
	*gate.Gate
	repo string
	want digest.Digest
	once sync.Once
	err  error
}

func (b *blockAfterAdmit) Admit(ctx context.Context, s proxy.Subject) (proxy.Decision, error) {
	dec, err := b.Gate.Admit(ctx, s)
	if err == nil && dec.Allow && s.Digest == b.want {
		b.once.Do(func() { _, b.err = b.Gate.Block(ctx, b.repo, b.want, "admin:bob", "pulled during an incident") })
	}
	return dec, err
}

// A block that lands while the first pull of an image is being served
// must not leave its layers readable: the proxy's recording of the blobs
// comes after the gate withdrew them.
func TestBlockDuringFirstServeLeavesNoBlobReadable(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "vendor/app", "1.0", 256, 1)
	h := newHarness(t, up, t.TempDir(), app.Digest.String()+"\n")
	const repo = "hcl/vendor/app"
	race := &blockAfterAdmit{Gate: h.gate, repo: repo, want: digest.Digest(app.Digest.String())}
	rt, err := proxy.NewRouter([]proxy.Upstream{{Name: "hcl"}, {Name: "hub", Default: true}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := upstream.New(upstream.Options{Name: "hcl", URL: up.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Options{Router: rt, Registries: map[string]proxy.Registry{"hcl": r}, DefaultTagTTL: time.Minute,
		Blobs: h.blobs, Meta: h.meta, Gate: race})
	if err != nil {
		t.Fatal(err)
	}
	// Pulls go through this proxy; the gate withdraws through the
	// harness's, on the same store.
	srv, orig := httptest.NewServer(p), h.srv
	h.srv = srv
	t.Cleanup(func() {
		srv.Close()
		_ = p.Close(context.Background())
		h.srv = orig
	})

	// The pull that raced the block was allowed; what follows is not.
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	if race.err != nil {
		t.Fatal(race.err)
	}
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "is blocked")
	h.wantStatus(blobPath(repo, app.Layers[0]), http.StatusForbidden, "DENIED")
}

// Only an index lists platforms. An image manifest that carries a
// "manifests" field of its own (a hostile upstream's) must not make the
// digests it names servable once an admin releases the manifest itself.
func TestImageManifestListsNoPlatforms(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	h := newHarness(t, up, t.TempDir(), "")
	ctx := t.Context()
	other := digest.FromString("an unpinned image the upstream wants through")
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + digest.FromString("c").String() + `","size":1},` +
		`"layers":[],"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + other.String() + `","size":2}]}`)
	trojan := digest.FromBytes(body)
	s := proxy.Subject{Upstream: "hcl", Repository: "vendor/app", Digest: trojan,
		MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
	if dec, err := h.gate.Admit(ctx, s); err != nil || dec.Allow {
		t.Fatalf("unpinned manifest: %+v, %v", dec, err)
	}
	if _, err := h.gate.Release(ctx, "hcl/vendor/app", trojan, "admin:ann", "looked at it: one image", time.Time{}); err != nil {
		t.Fatal(err)
	}
	if img, err := h.meta.Image(ctx, "hcl/vendor/app", trojan); err != nil || len(img.Platforms) != 0 {
		t.Errorf("an image manifest was recorded with platforms %+v (%v)", img.Platforms, err)
	}
	dec, err := h.gate.Admit(ctx, proxy.Subject{Upstream: "hcl", Repository: "vendor/app", Digest: other,
		MediaType: "application/vnd.oci.image.manifest.v1+json", Body: []byte(`{}`)})
	if err != nil || dec.Allow {
		t.Fatalf("a digest named by a released image manifest was let through: %+v, %v", dec, err)
	}
}

// A crash (kill -9) between the commit of a block and the withdrawal of
// the image's blobs leaves a store whose image is blocked and whose blob
// links still say admitted. After the restart the gate must finish the
// withdrawal, not leave the layers readable by digest for good.
func TestRestartFinishesAWithdrawalACrashInterrupted(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "vendor/app", "1.0", 256, 1)
	dir := t.TempDir()
	pins := app.Digest.String() + "\n"
	h := newHarness(t, up, dir, pins)
	const repo = "hcl/vendor/app"
	d := digest.Digest(app.Digest.String())
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	h.wantStatus(blobPath(repo, app.Layers[0]), http.StatusOK)

	// What the gate's block commits, and then the crash: no withdrawal.
	now := h.clock.Now()
	_, err := h.meta.UpdateImage(t.Context(), repo, d, now, func(img *metadata.Image) (metadata.Change, error) {
		img.Override = &metadata.Override{Action: metadata.ActionBlock, By: "admin:bob", Reason: "incident", At: now}
		img.State = metadata.StateBlocked
		return metadata.Change{Actor: "admin:bob", Action: metadata.ActionBlock, Reason: "incident"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	h.close()

	h2 := newHarness(t, up, dir, pins)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { h2.gate.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	h2.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "is blocked")
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, _ := h2.get(blobPath(repo, app.Layers[0]))
		if status == http.StatusForbidden {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the layer of a blocked image is still served (%d) after the restart", status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slowManifestWrites is the metadata store, with the background write of
// one manifest held until release is closed: a slow volume.
type slowManifestWrites struct {
	*metadata.DB
	hold    digest.Digest
	release chan struct{}
	landed  chan struct{}
}

func (s *slowManifestWrites) PutManifest(ctx context.Context, repo string, rec metadata.ManifestRecord, link metadata.Link, admit ...metadata.BlobLink) error {
	if rec.Digest != s.hold {
		return s.DB.PutManifest(ctx, repo, rec, link, admit...)
	}
	<-s.release
	err := s.DB.PutManifest(ctx, repo, rec, link, admit...)
	close(s.landed)
	return err
}

// Where no policy applies, a manifest's blobs are admitted by its
// background write. A block that lands before that write finds nothing
// to withdraw; the write must not then make the layers of the blocked
// image readable.
func TestBlockBeforeBackgroundWriteLandsLeavesNoBlobReadable(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "team/tool", "1", 256, 1)
	h := newHarness(t, up, t.TempDir(), "")
	const repo = "hub/team/tool"
	d := digest.Digest(app.Digest.String())
	slow := &slowManifestWrites{DB: h.meta, hold: d, release: make(chan struct{}), landed: make(chan struct{})}
	rt, err := proxy.NewRouter([]proxy.Upstream{{Name: "hcl"}, {Name: "hub", Default: true}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := upstream.New(upstream.Options{Name: "hub", URL: up.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Options{Router: rt, Registries: map[string]proxy.Registry{"hub": r}, DefaultTagTTL: time.Minute,
		Blobs: h.blobs, Meta: slow, Gate: h.gate})
	if err != nil {
		t.Fatal(err)
	}
	srv, orig := httptest.NewServer(p), h.srv
	h.srv = srv
	t.Cleanup(func() {
		srv.Close()
		_ = p.Close(context.Background())
		h.srv = orig
	})

	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	// The gate withdraws through the harness's proxy; the store has
	// nothing of the image yet.
	if _, err := h.gate.Block(t.Context(), repo, d, "admin:bob", "incident"); err != nil {
		t.Fatal(err)
	}
	close(slow.release)
	<-slow.landed
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, _ := h.get(blobPath(repo, app.Layers[0]))
		if status == http.StatusForbidden {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the layer of a blocked image is served (%d) after its manifest's write landed", status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An upstream may serve an index that lists as many manifests as 4 MiB
// holds (~45000; the test pulls 30000). Pulling its platforms one by one, and writing down
// which were fetched, must cost time in proportion to them, not to their
// square: the counts are kept under a lock every pull takes, and written
// in a transaction every change waits for.
func TestHugeIndexPlatformPullsStayLinear(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	h := newHarness(t, up, t.TempDir(), "")
	ctx := t.Context()
	const n = 30000
	var b strings.Builder
	b.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
	children := make([]digest.Digest, n)
	for i := range n {
		children[i] = digest.FromString(strconv.Itoa(i))
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`{"digest":"` + children[i].String() + `"}`)
	}
	b.WriteString("]}")
	body := []byte(b.String())
	const index = "application/vnd.oci.image.index.v1+json"
	idx := digest.FromBytes(body)
	if dec, err := h.gate.Admit(ctx, proxy.Subject{Upstream: "hub", Repository: "x/y", Digest: idx, MediaType: index, Body: body}); err != nil || !dec.Allow {
		t.Fatalf("index: %+v, %v", dec, err)
	}
	start := time.Now()
	for _, c := range children {
		dec, err := h.gate.Admit(ctx, proxy.Subject{Upstream: "hub", Repository: "x/y", Digest: c,
			MediaType: "application/vnd.oci.image.manifest.v1+json", Body: []byte("{}")})
		if err != nil || !dec.Allow {
			t.Fatalf("platform %s: %+v, %v", c, dec, err)
		}
	}
	h.gate.Flush(ctx)
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("%d platform pulls and their flush took %v", n, took)
	}
	img, err := h.meta.Image(ctx, "hub/x/y", idx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range img.Platforms {
		if !p.Fetched {
			t.Fatalf("platform %s was pulled but is not marked fetched", p.Digest)
		}
	}
}

// failOnce is the store, failing the first write of one kind of change.
type failOnce struct {
	*metadata.DB
	action string
	failed atomic.Bool
}

func (f *failOnce) UpdateImage(ctx context.Context, repo string, d digest.Digest, now time.Time, fn func(img *metadata.Image) (metadata.Change, error)) (metadata.Image, error) {
	return f.DB.UpdateImage(ctx, repo, d, now, func(img *metadata.Image) (metadata.Change, error) {
		c, err := fn(img)
		if err == nil && c.Action == f.action && f.failed.CompareAndSwap(false, true) {
			return c, errors.New("injected: the volume is full")
		}
		return c, err
	})
}

// A reload whose re-decision fails for one image (a full volume) must not
// leave the other images under the old policies, nor that one for good:
// known images are answered from memory and not decided again on a pull.
func TestPolicyReloadSurvivesAFailedWrite(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	h := newHarness(t, up, t.TempDir(), "")
	ctx := t.Context()
	var ds []digest.Digest
	var pins string
	for i := range 5 {
		d := digest.FromString("image " + strconv.Itoa(i))
		ds = append(ds, d)
		pins += d.String() + "\n"
	}
	if err := os.WriteFile(h.pins, []byte(pins), 0o600); err != nil {
		t.Fatal(err)
	}
	store := &failOnce{DB: h.meta, action: "redecide"}
	g, err := gate.New(ctx, gate.Options{Store: store, Content: &content{p: h.proxy}, Policies: h.policies(), Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	admit := func(d digest.Digest) proxy.Decision {
		t.Helper()
		dec, err := g.Admit(ctx, proxy.Subject{Upstream: "hcl", Repository: "vendor/app", Digest: d,
			MediaType: "application/vnd.oci.image.manifest.v1+json", Body: []byte("{}")})
		if err != nil {
			t.Fatal(err)
		}
		return dec
	}
	for _, d := range ds {
		if !admit(d).Allow {
			t.Fatalf("pinned %s refused", d)
		}
	}
	// Unpin them all.
	if err := os.WriteFile(h.pins, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := g.SetPolicies(ctx, h.policies()); err == nil {
		t.Fatal("SetPolicies hid the failed write")
	}
	allowed := 0
	for _, d := range ds {
		if admit(d).Allow {
			allowed++
		}
	}
	if allowed != 1 {
		t.Errorf("after a reload that failed for one image, %d unpinned images are still served, want only that one", allowed)
	}
	// The background loop decides it again.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { g.Run(runCtx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for d := range slices.Values(ds) {
		for admit(d).Allow {
			if time.Now().After(deadline) {
				t.Fatalf("%s is still served under the old pins", d)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Many admins at once: every change gets its audit record, the records
// are numbered without gaps, the chain checks, and memory agrees with the
// store (the repository stops being governed once every block is lifted).
func TestConcurrentAdminChangesKeepAuditAndMemoryConsistent(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	h := newHarness(t, up, t.TempDir(), "")
	ctx := t.Context()
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			d := digest.FromString("digest " + strconv.Itoa(i))
			if _, err := h.gate.Block(ctx, "hub/team/tool", d, "admin:a"+strconv.Itoa(i), "incident"); err != nil {
				errs <- err
				return
			}
			if _, err := h.gate.Unblock(ctx, "hub/team/tool", d, "admin:b"+strconv.Itoa(i), "all clear"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	recs := h.audit()
	if len(recs) != 2*n {
		t.Fatalf("%d audit records for %d changes", len(recs), 2*n)
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i+1, r.Seq)
		}
	}
	if chk, err := h.meta.VerifyAudit(ctx); err != nil || !chk.OK || chk.Records != 2*n {
		t.Fatalf("VerifyAudit = %+v, %v", chk, err)
	}
	if h.gate.Governs("hub", "team/tool") {
		t.Error("the repository is still governed after every block was lifted")
	}
}

// A policy added on reload that covers a repository pulled so far as a
// plain cache: what it refuses loses its layers there, platforms of an
// index included, though they were admitted when nothing governed it.
func TestPolicyAddedOnReloadWithdrawsWhatWasAdmitted(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "team/multi", "1", 256, 1)
	app := up.PushImage(t, "team/app", "1", 256, 1)
	h := newHarness(t, up, t.TempDir(), "")
	arm, _ := idx.Image("arm64")
	for _, p := range []string{manifestPath("hub/team/multi", "1"), manifestPath("hub/team/multi", arm.Digest.String()),
		blobPath("hub/team/multi", arm.Layers[0]), manifestPath("hub/team/app", "1"), blobPath("hub/team/app", app.Layers[0])} {
		h.wantStatus(p, http.StatusOK)
	}
	empty := filepath.Join(t.TempDir(), "none.txt")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pols := append([]config.Policy(nil), pinPolicy...)
	pols[0].Pins = h.pins
	pols = append(pols, config.Policy{Name: "hub-team", Match: []string{"hub/team/*"}, Mode: config.ModeEnforce, Pins: empty})
	set, err := policy.Compile(pols, os.ReadFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := h.gate.SetPolicies(t.Context(), set); err != nil || n != 2 {
		t.Fatalf("SetPolicies = %d, %v; want 2 images changed", n, err)
	}
	for _, p := range []string{manifestPath("hub/team/multi", arm.Digest.String()), blobPath("hub/team/multi", arm.Layers[0]),
		blobPath("hub/team/app", app.Layers[0])} {
		h.wantStatus(p, http.StatusForbidden, "DENIED")
	}
}

// A release ends exactly at its expiry, for the image and for the
// platforms of a released index, before the expiry is recorded; a renewal
// before then keeps it going.
func TestReleaseEndsExactlyAtItsExpiry(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "vendor/multi", "3.0", 256, 1)
	h := newHarness(t, up, t.TempDir(), "")
	const repo = "hcl/vendor/multi"
	arm, _ := idx.Image("arm64")
	d := digest.Digest(idx.Digest.String())
	h.wantStatus(manifestPath(repo, "3.0"), http.StatusForbidden, "is quarantined")
	end := h.clock.Now().Add(time.Hour)
	if _, err := h.gate.Release(t.Context(), repo, d, "admin:ann", "vendor hotfix", end); err != nil {
		t.Fatal(err)
	}
	h.clock.advance(time.Hour - time.Nanosecond)
	h.wantStatus(manifestPath(repo, "3.0"), http.StatusOK)
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusOK)
	// Renewed a nanosecond before its end.
	if _, err := h.gate.Release(t.Context(), repo, d, "admin:ann", "still needed", end.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	h.clock.advance(time.Hour)
	h.wantStatus(manifestPath(repo, idx.Digest.String()), http.StatusOK)
	h.clock.advance(time.Nanosecond) // exactly the renewed end
	h.wantStatus(manifestPath(repo, idx.Digest.String()), http.StatusForbidden, "release ended")
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "is a platform of")
	if n := h.gate.ExpireReleases(t.Context()); n != 1 {
		t.Fatalf("ExpireReleases = %d, want 1", n)
	}
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden, "DENIED")
}

// HEAD is refused as GET is, for a refused image and for its layers, and
// an unprefixed name routed to the default upstream reaches the same
// repository, and the same refusal, as the path prefix. (?ns= routing is
// checked against the keys in proxy's TestKnownAgreesWithRouteKeys.)
func TestHeadAndDefaultRoutingAreGatedAlike(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "team/tool", "1", 256, 1)
	h := newHarness(t, up, t.TempDir(), "")
	const repo = "hub/team/tool"
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	h.wantStatus(blobPath(repo, app.Layers[0]), http.StatusOK)
	if _, err := h.gate.Block(t.Context(), repo, digest.Digest(app.Digest.String()), "admin:bob", "incident"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{manifestPath(repo, "1"), manifestPath(repo, app.Digest.String()), blobPath(repo, app.Layers[0]),
		// hub is the default upstream: the unprefixed name is the same repository.
		manifestPath("team/tool", "1"), blobPath("team/tool", app.Layers[0])} {
		for _, method := range []string{http.MethodHead, http.MethodGet} {
			req, _ := http.NewRequestWithContext(t.Context(), method, h.srv.URL+p, nil)
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s %s = %d, want 403", method, p, resp.StatusCode)
			}
		}
	}
}

// When an admin moves a tag pin to a new release (latest: A -> B), the old
// release stays pinned under its own tag (1.0 -> A) and must keep being
// served as 1.0. Airlock's memory that latest resolved to A is stale by
// the pins' own word; it must not quarantine A. A pull of latest that
// still gets A (an upstream rolling back) is refused.
func TestMovingOneTagPinKeepsTheOldReleaseServedUnderItsOwnTag(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	a, b := digest.FromString("release 1.0"), digest.FromString("release 1.1")
	const repo = "hcl/vendor/app"
	h := newHarness(t, up, t.TempDir(), repo+":1.0 "+a.String()+"\n"+repo+":latest "+a.String()+"\n")
	ctx := t.Context()
	admit := func(d digest.Digest, tag string) proxy.Decision {
		t.Helper()
		dec, err := h.gate.Admit(ctx, proxy.Subject{Upstream: "hcl", Repository: "vendor/app", Digest: d, Tag: tag,
			MediaType: "application/vnd.oci.image.manifest.v1+json", Body: []byte("{}")})
		if err != nil {
			t.Fatal(err)
		}
		return dec
	}
	if !admit(a, "1.0").Allow || !admit(a, "latest").Allow {
		t.Fatal("the pinned release is refused")
	}
	if err := os.WriteFile(h.pins, []byte(repo+":1.0 "+a.String()+"\n"+repo+":latest "+b.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.gate.SetPolicies(ctx, h.policies()); err != nil {
		t.Fatal(err)
	}
	if dec := admit(a, "1.0"); !dec.Allow {
		t.Errorf("1.0, still pinned to its digest, is refused after latest moved on: %s", dec.Message)
	}
	if img := h.image(repo, mustHash(t, a)); img.State != metadata.StateApproved {
		t.Errorf("the 1.0 image is %s: %+v", img.State, img.Reasons)
	}
	if !admit(b, "latest").Allow {
		t.Error("the new latest is refused")
	}
	if dec := admit(a, "latest"); dec.Allow {
		t.Error("latest rolled back to the old release is served")
	}
}

func mustHash(t *testing.T, d digest.Digest) v1.Hash {
	t.Helper()
	h, err := v1.NewHash(d.String())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// pushFakeSignature publishes, under a cosign-style tag, a "signature"
// artifact whose one layer is the bytes of layer (a DSSE envelope by its
// media type only), as a hostile upstream could, and returns its digest.
func pushFakeSignature(t *testing.T, up *upstreamtest.Upstream, repo string, layer v1.Hash, subject v1.Hash) (digest.Digest, string) {
	t.Helper()
	d, tag := pushArtifact(t, up.Host, repo, "sha256-"+subject.Hex+".att", up.Blob(t, layer), "application/vnd.dsse.envelope.v1+json")
	return digest.Digest(d.String()), tag
}

// A signature artifact is approved on sight, but its blobs are the
// upstream's choice: one that lists a quarantined image's layer must not
// make it readable, whichever of the two was pulled first.
func TestSignatureArtifactCannotCarryAQuarantinedLayer(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	t.Run("quarantined first", func(t *testing.T) {
		t.Parallel()
		up := upstreamtest.New(t, upstreamtest.Options{})
		ok := up.PushImage(t, "vendor/app", "ok", 256, 1)
		q := up.PushImage(t, "vendor/app", "evil", 256, 1)
		h := newHarness(t, up, t.TempDir(), ok.Digest.String()+"\n")
		h.wantStatus(manifestPath(repo, "ok"), http.StatusOK)
		h.wantStatus(manifestPath(repo, "evil"), http.StatusForbidden, "is quarantined")
		// A "signature" of the approved image that lists the quarantined
		// image's layer is served, the layer is not.
		_, tag := pushFakeSignature(t, up, "vendor/app", q.Layers[0], ok.Digest)
		h.wantStatus(manifestPath(repo, tag), http.StatusOK)
		h.wantStatus(blobPath(repo, q.Layers[0]), http.StatusForbidden, "DENIED")
		h.wantStatus(manifestPath(repo, tag), http.StatusOK)
		h.wantStatus(blobPath(repo, q.Layers[0]), http.StatusForbidden, "DENIED")
		// A "signature" of the quarantined image is not served at all.
		_, qtag := pushFakeSignature(t, up, "vendor/app", q.Layers[0], q.Digest)
		h.wantStatus(manifestPath(repo, qtag), http.StatusForbidden, "is a signature of", "which is quarantined")
		h.wantStatus(blobPath(repo, q.Layers[0]), http.StatusForbidden, "DENIED")
	})
	t.Run("artifact first", func(t *testing.T) {
		t.Parallel()
		up := upstreamtest.New(t, upstreamtest.Options{})
		ok := up.PushImage(t, "vendor/app", "ok", 256, 1)
		q := up.PushImage(t, "vendor/app", "evil", 256, 1)
		_, tag := pushFakeSignature(t, up, "vendor/app", q.Layers[0], ok.Digest)
		h := newHarness(t, up, t.TempDir(), ok.Digest.String()+"\n"+q.Digest.String()+"\n")
		h.wantStatus(manifestPath(repo, "ok"), http.StatusOK)
		h.wantStatus(manifestPath(repo, tag), http.StatusOK)
		h.wantStatus(manifestPath(repo, "evil"), http.StatusOK)
		// The image is refused after the artifact admitted the layer: the
		// withdrawal does not count the artifact's claim on it.
		if _, err := h.gate.Block(t.Context(), repo, digest.Digest(q.Digest.String()), "admin:bob", "evil"); err != nil {
			t.Fatal(err)
		}
		h.wantStatus(blobPath(repo, q.Layers[0]), http.StatusForbidden, "DENIED")
	})
	t.Run("signature of nothing served", func(t *testing.T) {
		t.Parallel()
		up := upstreamtest.New(t, upstreamtest.Options{})
		q := up.PushImage(t, "vendor/app", "evil", 256, 1)
		never := up.PushImage(t, "vendor/app", "never", 64, 1)
		sig, tag := pushFakeSignature(t, up, "vendor/app", q.Layers[0], never.Digest)
		h := newHarness(t, up, t.TempDir(), "")
		// By digest, without the tag naming what it signs, it is an image.
		h.wantStatus(manifestPath(repo, sig.String()), http.StatusForbidden, "is quarantined")
		h2 := newHarness(t, up, t.TempDir(), "")
		h2.wantStatus(manifestPath(repo, tag), http.StatusForbidden, "which airlock has not served")
		h2.wantStatus(manifestPath(repo, sig.String()), http.StatusForbidden, "which airlock has not served")
		h2.wantStatus(blobPath(repo, q.Layers[0]), http.StatusForbidden, "DENIED")
		h.wantStatus(blobPath(repo, q.Layers[0]), http.StatusForbidden, "DENIED")
	})
}
