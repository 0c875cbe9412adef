package gate_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify/signature"
)

// harness is a whole pull path: an in-process upstream registry reached
// under two names ("hcl", governed by a pin policy, and "hub", governed by
// none), the proxy, a real bbolt store and blob store, and the gate.
type harness struct {
	t     *testing.T
	up    *upstreamtest.Upstream
	dir   string
	pins  string
	meta  *metadata.DB
	blobs *storage.Blobs
	proxy *proxy.Proxy
	gate  *gate.Gate
	srv   *httptest.Server
	reg   *prometheus.Registry
	clock *clock
	// verifies counts signature checks run.
	verifies atomic.Int64
	// verifying, when set, runs at the start of each signature check.
	verifying atomic.Pointer[func(ctx context.Context, d digest.Digest) error]
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// content binds the gate to the proxy built after it.
type content struct{ p *proxy.Proxy }

func (c *content) Withdraw(ctx context.Context, repo string, d digest.Digest, servable func(digest.Digest) bool) error {
	return c.p.Withdraw(ctx, repo, d, servable)
}
func (c *content) Remove(ctx context.Context, repo string, d digest.Digest) error {
	return c.p.Remove(ctx, repo, d)
}

var pinPolicy = []config.Policy{{Name: "hcl-pinned", Match: []string{"hcl/*"}, Mode: config.ModeEnforce, Pins: "pins.txt"}}

func newHarness(t *testing.T, up *upstreamtest.Upstream, dir, pins string) *harness {
	t.Helper()
	return newHarnessWith(t, up, dir, pins, nil)
}

// newHarnessWith is newHarness with opts changing the gate's options.
func newHarnessWith(t *testing.T, up *upstreamtest.Upstream, dir, pins string, opts func(*gate.Options)) *harness {
	t.Helper()
	h := &harness{t: t, up: up, dir: dir, pins: filepath.Join(dir, "pins.txt"), reg: prometheus.NewRegistry(),
		clock: &clock{now: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}}
	if err := os.WriteFile(h.pins, []byte(pins), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if h.meta, err = metadata.Open(filepath.Join(dir, "metadata.db")); err != nil {
		t.Fatal(err)
	}
	blobs, err := storage.NewFilesystem(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	h.blobs = blobs
	regs := map[string]proxy.Registry{}
	for _, name := range []string{"hcl", "hub"} {
		r, err := upstream.New(upstream.Options{Name: name, URL: up.URL, MaxAttempts: 1, IdleTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		regs[name] = r
	}
	rt, err := proxy.NewRouter([]proxy.Upstream{{Name: "hcl"}, {Name: "hub", Default: true}})
	if err != nil {
		t.Fatal(err)
	}
	c := &content{}
	o := gate.Options{Store: h.meta, Content: c, Policies: h.policies(),
		Now: h.clock.Now, Registerer: h.reg, KnownRepository: rt.Known,
		Verify: func(ctx context.Context, check policy.SignatureCheck, repo string, d digest.Digest, mt string) (metadata.SignatureEvidence, error) {
			h.verifies.Add(1)
			if hook := h.verifying.Load(); hook != nil {
				if err := (*hook)(ctx, d); err != nil {
					return metadata.SignatureEvidence{}, err
				}
			}
			return check.(*signature.Verifier).Verify(ctx, c.p.Fetcher(repo), d, mt)
		}}
	if opts != nil {
		opts(&o)
	}
	h.gate, err = gate.New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	h.proxy, err = proxy.New(proxy.Options{Router: rt, Registries: regs, DefaultTagTTL: time.Minute, Blobs: blobs,
		Meta: h.meta, Gate: h.gate})
	if err != nil {
		t.Fatal(err)
	}
	c.p = h.proxy
	h.srv = httptest.NewServer(h.proxy)
	t.Cleanup(h.close)
	return h
}

func (h *harness) policies() *policy.Set {
	h.t.Helper()
	pols := append([]config.Policy(nil), pinPolicy...)
	pols[0].Pins = h.pins
	set, err := policy.Compile(pols, os.ReadFile, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return set
}

func (h *harness) close() {
	if h.srv == nil {
		return
	}
	h.srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = h.proxy.Close(ctx)
	h.gate.Sync()
	h.gate.Flush(ctx)
	h.meta.Close()
	h.srv = nil
}

// get fetches a registry path and returns the status, body and the OCI
// error code if any.
func (h *harness) get(path string) (int, string) {
	h.t.Helper()
	req, _ := http.NewRequestWithContext(h.t.Context(), http.MethodGet, h.srv.URL+path, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (h *harness) wantStatus(path string, want int, contains ...string) {
	h.t.Helper()
	got, body := h.get(path)
	if got != want {
		h.t.Fatalf("GET %s = %d %s, want %d", path, got, trim(body), want)
	}
	for _, c := range contains {
		if !strings.Contains(body, c) {
			h.t.Fatalf("GET %s body %s lacks %q", path, trim(body), c)
		}
	}
}

func trim(s string) string {
	if len(s) > 1600 {
		return s[:1600] + "..."
	}
	return s
}

func (h *harness) image(repo string, d v1.Hash) metadata.Image {
	h.t.Helper()
	h.gate.Sync() // images approved on sight are recorded in the background
	img, err := h.meta.Image(h.t.Context(), repo, digest.Digest(d.String()))
	if err != nil {
		h.t.Fatalf("image %s@%s: %v", repo, d, err)
	}
	return img
}

func (h *harness) audit() []metadata.AuditRecord {
	h.t.Helper()
	h.gate.Sync()
	recs, err := h.meta.Audit(h.t.Context(), 0, 1000)
	if err != nil {
		h.t.Fatal(err)
	}
	return recs
}

func blobPath(repo string, d v1.Hash) string      { return "/v2/" + repo + "/blobs/" + d.String() }
func manifestPath(repo string, ref string) string { return "/v2/" + repo + "/manifests/" + ref }

func TestQuarantineReleaseExpireBlock(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	pinned := up.PushImage(t, "vendor/app", "1.0", 512, 2)
	unpinned := up.PushImage(t, "vendor/app", "1.1", 512, 2)
	h := newHarness(t, up, t.TempDir(), "hcl/vendor/app:1.0 "+pinned.Digest.String()+"\n")
	const repo = "hcl/vendor/app"

	// The pinned tag is approved; its blobs are readable.
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	h.wantStatus(blobPath(repo, pinned.Layers[0]), http.StatusOK)
	if img := h.image(repo, pinned.Digest); img.State != metadata.StateApproved || len(img.Tags) != 1 || img.Tags[0] != "1.0" {
		t.Fatalf("pinned image: %+v", img)
	}

	// An unpinned digest is quarantined, with a message that says why and
	// what to run; its layers cannot be read by digest either.
	h.wantStatus(manifestPath(repo, "1.1"), http.StatusForbidden, "DENIED", "is quarantined", "policy hcl-pinned", "tag 1.1",
		"airlock images show "+repo+"@"+unpinned.Digest.String())
	h.wantStatus(blobPath(repo, unpinned.Layers[0]), http.StatusForbidden, "DENIED")
	img := h.image(repo, unpinned.Digest)
	if img.State != metadata.StateQuarantined || len(img.Reasons) != 1 || img.Reasons[0].Type != metadata.ReasonPolicy ||
		img.Reasons[0].Policy != "hcl-pinned" || img.Reasons[0].Tag != "1.1" {
		t.Fatalf("unpinned image: %+v", img)
	}

	// Admin errors change nothing.
	ctx := t.Context()
	d := digest.Digest(unpinned.Digest.String())
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"no reason", func() error { _, err := h.gate.Release(ctx, repo, d, "admin:ann", " ", time.Time{}); return err }(), gate.ErrInvalid},
		{"expiry in the past", func() error {
			_, err := h.gate.Release(ctx, repo, d, "admin:ann", "x", h.clock.Now().Add(-time.Second))
			return err
		}(), gate.ErrInvalid},
		{"unknown digest", func() error {
			_, err := h.gate.Release(ctx, repo, digest.FromString("nope"), "admin:ann", "x", time.Time{})
			return err
		}(), storage.ErrNotFound},
		{"release of an approved image", func() error {
			_, err := h.gate.Release(ctx, repo, digest.Digest(pinned.Digest.String()), "admin:ann", "x", time.Time{})
			return err
		}(), gate.ErrConflict},
		{"block in an unknown repository", func() error {
			_, err := h.gate.Block(ctx, "nowhere/app", d, "admin:ann", "x")
			return err
		}(), storage.ErrNotFound},
		{"unblock of an image not blocked", func() error { _, err := h.gate.Unblock(ctx, repo, d, "admin:ann", "x"); return err }(), gate.ErrConflict},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if n := len(h.audit()); n != 2 {
		t.Fatalf("audit has %d records after refused admin requests, want 2 (two images decided)", n)
	}

	// A release lets exactly that digest through until it expires.
	if _, err := h.gate.Release(ctx, repo, d, "admin:ann", "vendor hotfix, ticket 7", h.clock.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, "1.1"), http.StatusOK)
	h.wantStatus(blobPath(repo, unpinned.Layers[0]), http.StatusOK)
	if img := h.image(repo, unpinned.Digest); img.State != metadata.StateReleased || img.Override == nil || img.Override.By != "admin:ann" {
		t.Fatalf("released image: %+v", img)
	}

	// A new digest behind the released tag is not released.
	moved := up.PushImage(t, "vendor/app", "1.1", 512, 1)
	h.clock.advance(2 * time.Minute) // past the tag TTL is not needed: by digest
	h.wantStatus(manifestPath(repo, moved.Digest.String()), http.StatusForbidden, "is quarantined")

	// At its end the release no longer counts, even before the expiry is
	// recorded; then the record and the blobs follow.
	h.clock.advance(time.Hour)
	h.wantStatus(manifestPath(repo, unpinned.Digest.String()), http.StatusForbidden, "is quarantined", "release ended")
	if n := h.gate.ExpireReleases(ctx); n != 1 {
		t.Fatalf("ExpireReleases = %d, want 1", n)
	}
	h.wantStatus(blobPath(repo, unpinned.Layers[0]), http.StatusForbidden, "DENIED")
	if img := h.image(repo, unpinned.Digest); img.State != metadata.StateQuarantined || img.Override != nil {
		t.Fatalf("after expiry: %+v", img)
	}

	// A block wins over approval, and its layers stop being readable.
	if _, err := h.gate.Block(ctx, repo, digest.Digest(pinned.Digest.String()), "admin:bob", "incident 42"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusForbidden, "is blocked", "incident 42")
	h.wantStatus(blobPath(repo, pinned.Layers[0]), http.StatusForbidden, "DENIED")
	if _, err := h.gate.Release(ctx, repo, digest.Digest(pinned.Digest.String()), "admin:ann", "x", time.Time{}); !errors.Is(err, gate.ErrConflict) {
		t.Errorf("release of a blocked image: %v, want ErrConflict", err)
	}
	if _, err := h.gate.Unblock(ctx, repo, digest.Digest(pinned.Digest.String()), "admin:bob", "false alarm"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, "1.0"), http.StatusOK)
	h.wantStatus(blobPath(repo, pinned.Layers[0]), http.StatusOK)

	// The audit log holds every change in order, and its chain checks.
	var got []string
	for _, r := range h.audit() {
		got = append(got, r.Actor+" "+r.Action+" "+string(r.From)+">"+string(r.To))
	}
	want := []string{
		"policy decide >approved", "policy decide >quarantined", "admin:ann release quarantined>released",
		"policy decide >quarantined", "expiry expire released>quarantined",
		"admin:bob block approved>blocked", "admin:bob unblock blocked>approved",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if chk, err := h.meta.VerifyAudit(ctx); err != nil || !chk.OK {
		t.Errorf("VerifyAudit = %+v, %v", chk, err)
	}
	if v := testutil.ToFloat64(mustGauge(t, h.reg, "airlock_images", "quarantined")); v != 2 {
		t.Errorf("airlock_images{state=quarantined} = %v, want 2", v)
	}
}

// mustGauge finds one series of a gathered metric family.
func mustGauge(t *testing.T, reg *prometheus.Registry, name, state string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" && l.GetValue() == state {
					g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
					g.Set(m.GetGauge().GetValue())
					return g
				}
			}
		}
	}
	t.Fatalf("no %s{state=%q}", name, state)
	return nil
}

func TestIndexPlatformsFollowTheirIndex(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "vendor/multi", "2.0", 256, 1)
	h := newHarness(t, up, t.TempDir(), idx.Digest.String()+"\n")
	const repo = "hcl/vendor/multi"
	arm, _ := idx.Image("arm64")

	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusOK)
	img := h.image(repo, idx.Digest)
	if len(img.Platforms) != 2 || img.Platforms[1].Architecture != "arm64" {
		t.Fatalf("index platforms: %+v", img.Platforms)
	}
	if _, err := h.meta.Image(t.Context(), repo, digest.Digest(arm.Digest.String())); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a platform served through its index got an image record of its own: %v", err)
	}

	// Blocking the index refuses its platforms and their layers.
	if _, err := h.gate.Block(t.Context(), repo, digest.Digest(idx.Digest.String()), "admin:bob", "bad base"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "is a platform of", "blocked")
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden, "DENIED")

	// Pull counts and platforms fetched reach the store.
	h.gate.Flush(t.Context())
	img = h.image(repo, idx.Digest)
	if img.Pulls != 1 || img.LastPulled.IsZero() || !img.Platforms[1].Fetched || img.Platforms[0].Fetched {
		t.Errorf("after flush: pulls %d last %v platforms %+v", img.Pulls, img.LastPulled, img.Platforms)
	}
}

func TestUngovernedApprovedOnSightAndPinsReload(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "vendor/app", "3", 256, 1)
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")

	// No policy covers hub/: approved on sight, as a plain cache.
	h.wantStatus(manifestPath("hub/vendor/app", "3"), http.StatusOK)
	h.wantStatus(blobPath("hub/vendor/app", app.Layers[0]), http.StatusOK)
	if img := h.image("hub/vendor/app", app.Digest); img.State != metadata.StateApproved || len(img.Reasons) != 0 {
		t.Fatalf("ungoverned image: %+v", img)
	}
	h.wantStatus(manifestPath("hcl/vendor/app", "3"), http.StatusForbidden, "is quarantined")

	// Pinning it and reloading decides it again.
	if err := os.WriteFile(h.pins, []byte(app.Digest.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := h.gate.SetPolicies(t.Context(), h.policies())
	if err != nil || n != 1 {
		t.Fatalf("SetPolicies = %d, %v; want 1 image changed", n, err)
	}
	h.wantStatus(manifestPath("hcl/vendor/app", "3"), http.StatusOK)
	h.wantStatus(blobPath("hcl/vendor/app", app.Layers[0]), http.StatusOK)

	// Unpinning it again withdraws it and its layers.
	if err := os.WriteFile(h.pins, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := h.gate.SetPolicies(t.Context(), h.policies()); err != nil || n != 1 {
		t.Fatalf("SetPolicies = %d, %v; want 1", n, err)
	}
	h.wantStatus(blobPath("hcl/vendor/app", app.Layers[0]), http.StatusForbidden, "DENIED")

	// States survive a restart.
	h.close()
	h2 := newHarness(t, up, dir, "")
	h2.wantStatus(manifestPath("hcl/vendor/app", app.Digest.String()), http.StatusForbidden, "is quarantined")
	h2.wantStatus(manifestPath("hub/vendor/app", "3"), http.StatusOK)
	if n := len(h2.audit()); n < 4 {
		t.Errorf("audit after restart has %d records", n)
	}
}

func TestBlockBeforeFirstPullAndDelete(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "team/tool", "1", 256, 1)
	h := newHarness(t, up, t.TempDir(), "")
	const repo = "hub/team/tool"
	d := digest.Digest(app.Digest.String())

	// A digest can be blocked before anyone pulls it, even where no policy
	// applies, and its layers are then held to it.
	if _, err := h.gate.Block(t.Context(), repo, d, "admin:bob", "known bad build"); err != nil {
		t.Fatal(err)
	}
	if !h.gate.Governs("hub", "team/tool") || h.gate.Governs("hub", "team/other") {
		t.Error("a block must govern its repository and only it")
	}
	h.wantStatus(manifestPath(repo, "1"), http.StatusForbidden, "is blocked", "known bad build")
	h.wantStatus(blobPath(repo, app.Layers[0]), http.StatusForbidden, "DENIED")

	// Deleting a blocked image removes its content but keeps the block.
	if err := h.gate.Delete(t.Context(), repo, d, "admin:bob", "clean up"); err != nil {
		t.Fatal(err)
	}
	if img := h.image(repo, app.Digest); img.State != metadata.StateBlocked {
		t.Errorf("after delete: %+v", img)
	}
	if n, err := h.proxy.CachedBytes(t.Context(), repo, d); err != nil || n != 0 {
		t.Errorf("CachedBytes after delete = %d, %v", n, err)
	}

	// Deleting an approved image forgets it; the next pull fetches it anew.
	other := up.PushImage(t, "team/other", "1", 256, 1)
	h.wantStatus(manifestPath("hub/team/other", "1"), http.StatusOK)
	h.wantStatus(blobPath("hub/team/other", other.Layers[0]), http.StatusOK)
	od := digest.Digest(other.Digest.String())
	if n, err := h.proxy.CachedBytes(t.Context(), "hub/team/other", od); err != nil || n < 256 {
		t.Fatalf("CachedBytes = %d, %v", n, err)
	}
	// The fill links and commits the blob just after serving it.
	for i := 0; ; i++ {
		_, err := h.meta.BlobLink(t.Context(), "hub/team/other", digest.Digest(other.Layers[0].String()))
		if err == nil {
			_, err = h.blobs.Stat(t.Context(), digest.Digest(other.Layers[0].String()))
		}
		if err == nil {
			break
		} else if i == 500 {
			t.Fatalf("blob never linked: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := up.BlobGETs(other.Layers[0])
	if err := h.gate.Delete(t.Context(), "hub/team/other", od, "admin:bob", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.meta.Image(t.Context(), "hub/team/other", od); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("deleted image still recorded: %v", err)
	}
	h.wantStatus(manifestPath("hub/team/other", "1"), http.StatusOK)
	h.wantStatus(blobPath("hub/team/other", other.Layers[0]), http.StatusOK)
	if up.BlobGETs(other.Layers[0]) != before+1 {
		t.Errorf("a deleted layer was served without a new upstream fetch (%d GETs before, %d after)", before, up.BlobGETs(other.Layers[0]))
	}
	recs := h.audit()
	last := recs[len(recs)-1]
	var actions []string
	for _, r := range recs {
		actions = append(actions, r.Action)
	}
	if !strings.Contains(strings.Join(actions, ","), "delete") {
		t.Errorf("no delete in the audit log: %v (last %s)", actions, mustJSON(last))
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
