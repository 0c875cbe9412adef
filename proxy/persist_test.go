package proxy

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// stalledMeta holds every PutManifest until release is closed, as a
// metadata volume behind a long fsync does.
type stalledMeta struct {
	Metadata
	release chan struct{}
	waiting atomic.Int64
}

func (s *stalledMeta) PutManifest(ctx context.Context, repo string, rec metadata.ManifestRecord, link metadata.Link, admit ...metadata.BlobLink) error {
	s.waiting.Add(1)
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Metadata.PutManifest(ctx, repo, rec, link, admit...)
}

// TestBackgroundWritesAreBounded: a burst of distinct manifests while the
// metadata volume is slow must not turn into one parked goroutine (holding
// a manifest body) per request: past a bound, a request writes its own
// manifest, as it did before writes went to the background.
func TestBackgroundWritesAreBounded(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	const n = 6
	digests := make([]string, n)
	for i := range n {
		img, _ := random.Image(64, 1)
		digests[i] = o.push(t, fmt.Sprintf("library/app:%d", i), img).String()
	}
	e := newEnv(t, o)
	stalled := &stalledMeta{Metadata: e.meta, release: make(chan struct{})}
	e.proxy.meta = stalled
	e.proxy.writes = make(chan struct{}, 2)

	var done atomic.Int64
	var wg sync.WaitGroup
	codes := make([]int, n)
	for i, d := range digests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.srv.URL+"/v2/app/manifests/"+d, nil)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				codes[i] = resp.StatusCode
				resp.Body.Close()
			}
			done.Add(1)
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for stalled.waiting.Load() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if w := stalled.waiting.Load(); w != n {
		close(stalled.release)
		wg.Wait()
		t.Fatalf("%d of %d manifest writes began", w, n)
	}
	time.Sleep(50 * time.Millisecond) // let any answered request finish
	answered := done.Load()
	close(stalled.release)
	wg.Wait()
	if answered > 2 {
		t.Errorf("%d requests were answered while their writes were parked, bound 2: background writes are unbounded", answered)
	}
	for i, c := range codes {
		if c != http.StatusOK {
			t.Errorf("manifest %d: status %d", i, c)
		}
	}
}

// TestNoBackgroundWriteAfterClose: a handler still running when Close
// returns (a drain that timed out) must not start a write the closed
// metadata store would refuse, nor grow the WaitGroup Close waits on.
func TestNoBackgroundWriteAfterClose(t *testing.T) {
	t.Parallel()
	e := newEnv(t, newOrigin(t, false))
	if err := e.proxy.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	var ran atomic.Bool
	rq := &request{route: Route{Upstream: &Upstream{Name: "hub"}, Repo: "library/app"}}
	e.proxy.persist(rq, "test write", func(context.Context) error { ran.Store(true); return nil })
	e.proxy.wg.Wait()
	if ran.Load() {
		t.Fatal("a background write ran after Close")
	}
}

// stalledTags holds every PutTag until release is closed.
type stalledTags struct {
	Metadata
	release chan struct{}
}

func (s *stalledTags) PutTag(ctx context.Context, repo, tag string, rec metadata.TagRecord) error {
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Metadata.PutTag(ctx, repo, tag, rec)
}

// TestPendingTagRecordOutranksTheStoredOne: a tag resolved again after its
// TTL is served from the new answer while that is written, not from the
// older record still on disk, which would send every pull in the meantime
// upstream again (or, were the upstream down, serve the older digest).
func TestPendingTagRecordOutranksTheStoredOne(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64, 1)
	o.push(t, "library/app:1", img)
	e := newEnv(t, o)
	if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 {
		t.Fatalf("first pull: %d", resp.StatusCode)
	}
	settle(t, e)
	later := e.now.Load().Add(2 * time.Minute) // past the tag TTL
	e.now.Store(&later)
	stalled := &stalledTags{Metadata: e.meta, release: make(chan struct{})}
	e.proxy.meta = stalled
	defer close(stalled.release)
	o.reset()
	for i := range 3 {
		if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 {
			t.Fatalf("pull %d: %d", i, resp.StatusCode)
		}
	}
	if n := o.count(http.MethodHead, "/v2/library/app/manifests/1"); n != 1 {
		t.Fatalf("3 pulls after the TTL made %d HEADs while the new tag record was written, want 1", n)
	}
}

// TestNoFillAfterClose: a blob request still being handled after Close
// (a drain that timed out) starts no fill, whose goroutine Close would no
// longer wait for, and gets a clear answer to retry.
func TestNoFillAfterClose(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, _ := random.Image(1024, 1)
	o.push(t, "library/app:1", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	e := newEnv(t, o)
	if err := e.proxy.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	o.reset()
	resp, body := e.get(t, "/v2/app/blobs/"+ld.String())
	if resp.StatusCode != http.StatusServiceUnavailable || ociCode(t, body) != CodeUnavailable || !strings.Contains(string(body), "shutting down") {
		t.Fatalf("blob after Close: %d %s", resp.StatusCode, body)
	}
	if n := o.total(); n != 0 {
		t.Fatalf("a request after Close went upstream: %v", o.counts)
	}
}

// TestFirstDeclarationStandsInMemoryAsOnDisk: two manifests in one
// repository declare different sizes for a layer. The store keeps the
// first declaration (a declaration never replaces a size known); while the
// writes are on their way, memory must say the same, or a fill is bound by
// a size the store contradicts a moment later, and a pull that joins
// neither fails.
func TestFirstDeclarationStandsInMemoryAsOnDisk(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64<<10, 1)
	o.push(t, "library/app:1", img)
	ld, want := layerOf(t, img, 0)
	cfg, _ := img.ConfigName()
	putManifest(t, o, "library/app", "liar", mediaOCIManifest, hostileManifest(t, cfg, ld.String()))
	e := newEnv(t, o)
	stalled := &stalledMeta{Metadata: e.meta, release: make(chan struct{})}
	e.proxy.meta = stalled
	defer close(stalled.release)
	for _, path := range []string{"/v2/library/app/manifests/liar", "/v2/library/app/manifests/1"} {
		if resp, _ := e.get(t, path); resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
	}
	size, _, ok := e.proxy.declaring.get("hub/library/app\x00"+ld.String(), e.proxy.now())
	if !ok || size == int64(len(want)) {
		t.Fatalf("declared size in memory = %d (%v); want the first manifest's, not the later one's %d", size, ok, len(want))
	}
}

// orderedTags holds each PutTag on a gate of its own, in arrival order.
type orderedTags struct {
	Metadata
	mu    sync.Mutex
	gates []chan struct{}
	done  []chan struct{}
}

func (s *orderedTags) PutTag(ctx context.Context, repo, tag string, rec metadata.TagRecord) error {
	s.mu.Lock()
	gate, done := make(chan struct{}), make(chan struct{})
	s.gates, s.done = append(s.gates, gate), append(s.done, done)
	s.mu.Unlock()
	defer close(done)
	select {
	case <-gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Metadata.PutTag(ctx, repo, tag, rec)
}

func (s *orderedTags) arrived() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.gates)
}

// TestOlderTagWriteNeverLandsLast: a tag resolved twice while the first
// record is still being written (a slow volume, a short TTL) must end on
// disk with the newer answer, whatever order the writes reach the store.
func TestOlderTagWriteNeverLandsLast(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img1, _ := random.Image(64, 1)
	o.push(t, "library/app:1", img1)
	e := newEnv(t, o)
	tags := &orderedTags{Metadata: e.meta}
	e.proxy.meta = tags
	if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 {
		t.Fatalf("first pull: %d", resp.StatusCode)
	}
	waitFor(t, func() bool { return tags.arrived() == 1 })
	img2, _ := random.Image(64, 1)
	newer := o.push(t, "library/app:1", img2) // the tag moves upstream
	later := e.now.Load().Add(2 * time.Minute)
	e.now.Store(&later)
	if resp, _ := e.get(t, "/v2/app/manifests/1"); resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != newer.String() {
		t.Fatalf("pull after the tag moved: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
	time.Sleep(100 * time.Millisecond) // let the second write reach the store, if it would
	tags.mu.Lock()
	gates, done := tags.gates, tags.done
	tags.mu.Unlock()
	if len(gates) == 2 {
		// Both wait: the newer lands first, then the older.
		close(gates[1])
		<-done[1]
		close(gates[0])
		<-done[0]
	} else {
		close(gates[0])
		waitFor(t, func() bool { return tags.arrived() == 2 })
		tags.mu.Lock()
		close(tags.gates[1])
		tags.mu.Unlock()
	}
	settle(t, e)
	rec, err := e.meta.Tag(t.Context(), "hub/library/app", "1")
	if err != nil || rec.Digest.String() != newer.String() {
		t.Fatalf("tag on disk = %s (%v), want the newer answer %s", rec.Digest, err, newer)
	}
}

// TestManifestIsRememberedAsLongAsItsWriteMayTake: a manifest whose write
// is still waiting for the volume is served from memory for as long as the
// write may take, not fetched again (and written twice) in the meantime.
func TestManifestIsRememberedAsLongAsItsWriteMayTake(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64, 1)
	d := o.push(t, "library/app:1", img)
	e := newEnv(t, o)
	stalled := &stalledMeta{Metadata: e.meta, release: make(chan struct{})}
	e.proxy.meta = stalled
	defer close(stalled.release)
	path := "/v2/app/manifests/" + d.String()
	if resp, _ := e.get(t, path); resp.StatusCode != 200 {
		t.Fatalf("first pull: %d", resp.StatusCode)
	}
	later := e.now.Load().Add(lookupTimeout - time.Second) // the write may still be running
	e.now.Store(&later)
	o.reset()
	if resp, _ := e.get(t, path); resp.StatusCode != 200 {
		t.Fatalf("second pull: %d", resp.StatusCode)
	}
	if n := o.total(); n != 0 {
		t.Fatalf("a manifest still being written was fetched again: %v", o.counts)
	}
}

// countingAdmits counts AdmitManifest calls.
type countingAdmits struct {
	*stalledMeta
	admits atomic.Int64
}

func (c *countingAdmits) AdmitManifest(ctx context.Context, repo string, d digest.Digest, blobs []metadata.BlobLink) error {
	c.admits.Add(1)
	return c.stalledMeta.AdmitManifest(ctx, repo, d, blobs)
}

// TestGovernedManifestIsAdmittedOnceWhileWritten: under a policy, a
// manifest admitted while its write is still on its way is not admitted
// again (a synchronous metadata commit) by every pull in the meantime.
func TestGovernedManifestIsAdmittedOnceWhileWritten(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	img, _ := random.Image(64, 1)
	d := o.push(t, "library/app:1", img)
	e := newEnv(t, o)
	e.proxy.gate = &denyGate{prefix: "library/"}
	meta := &countingAdmits{stalledMeta: &stalledMeta{Metadata: e.meta, release: make(chan struct{})}}
	e.proxy.meta = meta
	defer close(meta.release)
	for range 3 {
		if resp, _ := e.get(t, "/v2/library/app/manifests/"+d.String()); resp.StatusCode != 200 {
			t.Fatalf("pull: %d", resp.StatusCode)
		}
	}
	if n := meta.admits.Load(); n != 1 {
		t.Fatalf("3 pulls of one manifest admitted it %d times, want 1", n)
	}
}
