package gate_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// refusingWrites fails the gate's writes of one image while set: the
// record of an image approved on sight has not landed (a full volume, or
// the admin's change won the race to the store).
type refusingWrites struct {
	*metadata.DB
	mu   sync.Mutex
	fail digest.Digest
}

func (r *refusingWrites) refuse(d digest.Digest) {
	r.mu.Lock()
	r.fail = d
	r.mu.Unlock()
}

func (r *refusingWrites) UpdateImage(ctx context.Context, repo string, d digest.Digest, now time.Time,
	fn func(img *metadata.Image) (metadata.Change, error)) (metadata.Image, error) {
	r.mu.Lock()
	fail := r.fail == d
	r.mu.Unlock()
	if fail {
		return metadata.Image{}, errors.New("no space left on device")
	}
	return r.DB.UpdateImage(ctx, repo, d, now, fn)
}

// An index approved on sight in a plain repository serves its platforms
// before its record lands. An admin's block that reaches the store first
// writes a record that knows nothing of the index's content: the block
// must still refuse the platforms and withdraw their layers.
func TestBlockOfIndexWhoseRecordHasNotLandedHoldsItsPlatforms(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	idx := up.PushIndex(t, "vendor/multi", "2.0", 256, 1)
	var store *refusingWrites
	h := newHarnessWith(t, up, t.TempDir(), "", func(o *gate.Options) {
		store = &refusingWrites{DB: o.Store.(*metadata.DB)}
		o.Store = store
	})
	const repo = "hub/vendor/multi"
	d := digest.Digest(idx.Digest.String())
	arm, _ := idx.Image("arm64")

	store.refuse(d)
	h.wantStatus(manifestPath(repo, "2.0"), http.StatusOK)
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusOK)
	h.gate.Sync()
	store.refuse("")

	if _, err := h.gate.Block(t.Context(), repo, d, "admin:bob", "incident"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden)
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "is a platform of", "blocked")
	img := h.image(repo, idx.Digest)
	if len(img.Platforms) != 2 || img.MediaType == "" || len(img.Tags) != 1 {
		t.Errorf("the block's record lost what was seen of the index: media type %q, platforms %+v, tags %v",
			img.MediaType, img.Platforms, img.Tags)
	}
}

// The pull counts are flushed every few seconds, and a flush waits for
// the records of images approved on sight, while other first pulls start
// more of them: waiting must not race with starting (a WaitGroup that is
// added to from zero while it is waited on panics, or trips the race
// detector).
func TestFlushWhileImagesAreApprovedOnSight(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	const n = 24
	imgs := make([]upstreamtest.Image, n)
	for i := range imgs {
		imgs[i] = up.PushImage(t, "team/many", fmt.Sprintf("v%d", i), 64, 1)
	}
	h := newHarness(t, up, t.TempDir(), "")
	stop := make(chan struct{})
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		for {
			select {
			case <-stop:
				return
			default:
				h.gate.Flush(t.Context())
			}
		}
	}()
	var wg sync.WaitGroup
	for i := range imgs {
		wg.Go(func() {
			h.wantStatus(manifestPath("hub/team/many", imgs[i].Digest.String()), http.StatusOK)
		})
	}
	wg.Wait()
	close(stop)
	<-flushed
	for _, img := range imgs {
		if got := h.image("hub/team/many", img.Digest); got.State != metadata.StateApproved {
			t.Errorf("%s: %s, want approved", img.Digest, got.State)
		}
	}
}

// An image approved on sight is listed and served before its record
// lands, or without one when the write failed; an admin deleting it then
// must delete it, not be told there is no such image while it is served.
func TestDeleteOfImageWhoseRecordHasNotLanded(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "team/tool", "1", 64, 1)
	var store *refusingWrites
	h := newHarnessWith(t, up, t.TempDir(), "", func(o *gate.Options) {
		store = &refusingWrites{DB: o.Store.(*metadata.DB)}
		o.Store = store
	})
	const repo = "hub/team/tool"
	d := digest.Digest(app.Digest.String())

	store.refuse(d)
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	h.gate.Sync()
	store.refuse("")
	if !h.gate.Servable("hub", "team/tool", d) {
		t.Fatal("the image approved on sight is not served before its record lands")
	}
	if err := h.gate.Delete(t.Context(), repo, d, "admin:bob", "cleanup"); err != nil {
		t.Fatalf("deleting a served image whose record has not landed: %v", err)
	}
	if h.gate.Servable("hub", "team/tool", d) {
		t.Error("the deleted image is still servable from memory")
	}
	if _, err := h.meta.Image(t.Context(), repo, d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the deleted image has a record: %v", err)
	}
}

// A crash (or a failed write) before the record of an image approved on
// sight lands leaves its layers admitted in the cache and no record of
// the image. Restarted under a policy that now refuses it, the gate must
// not leave those layers readable by digest: the refusal on its next
// sight withdraws what the lost approval admitted.
func TestRecordLostBeforeAPolicyRefusesTheImage(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "team/app", "1", 256, 1)
	dir := t.TempDir()
	const repo = "hub/team/app"
	d := digest.Digest(app.Digest.String())
	var store *refusingWrites
	h := newHarnessWith(t, up, dir, "", func(o *gate.Options) {
		store = &refusingWrites{DB: o.Store.(*metadata.DB)}
		o.Store = store
	})
	store.refuse(d)
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	h.wantStatus(blobPath(repo, app.Layers[0]), http.StatusOK)
	h.close()

	empty := filepath.Join(t.TempDir(), "none.txt")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h2 := newHarnessWith(t, up, dir, "", func(o *gate.Options) {
		pols := append([]config.Policy(nil), pinPolicy...)
		pols[0].Pins = filepath.Join(dir, "pins.txt")
		pols = append(pols, config.Policy{Name: "hub-team", Match: []string{"hub/team/*"}, Mode: config.ModeEnforce, Pins: empty})
		set, err := policy.Compile(pols, os.ReadFile, nil)
		if err != nil {
			t.Fatal(err)
		}
		o.Policies = set
	})
	h2.wantStatus(manifestPath(repo, "1"), http.StatusForbidden, "quarantined")
	h2.wantStatus(blobPath(repo, app.Layers[0]), http.StatusForbidden, "DENIED")
}

// A tag that moves to another digest in a plain repository is taken from
// the image it named, as it is where a policy governs: the records must
// not show both images under it.
func TestTagMovedInPlainRepositoryLeavesTheOldImage(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	h := newHarness(t, up, t.TempDir(), "")
	a, b := digest.FromString("release 1.0"), digest.FromString("release 1.1")
	const repo = "hub/vendor/app"
	for _, d := range []digest.Digest{a, b} {
		dec, err := h.gate.Admit(t.Context(), proxy.Subject{Upstream: "hub", Repository: "vendor/app", Digest: d, Tag: "latest",
			MediaType: "application/vnd.oci.image.manifest.v1+json", Body: []byte("{}")})
		if err != nil || !dec.Allow {
			t.Fatalf("%s: %+v, %v", d, dec, err)
		}
		h.gate.Sync()
	}
	if img := h.image(repo, mustHash(t, a)); len(img.Tags) != 0 {
		t.Errorf("the image latest moved away from keeps tags %v", img.Tags)
	}
	if img := h.image(repo, mustHash(t, b)); len(img.Tags) != 1 || img.Tags[0] != "latest" {
		t.Errorf("the image latest moved to has tags %v", img.Tags)
	}
}

// A record of an image approved on sight that failed to land is written
// on the image's next pull, as the log promises: until then the admin API
// does not list the image, nor does the store keep its pull counts.
func TestFailedBackgroundRecordIsWrittenOnTheNextPull(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "team/tool", "1", 64, 1)
	var store *refusingWrites
	h := newHarnessWith(t, up, t.TempDir(), "", func(o *gate.Options) {
		store = &refusingWrites{DB: o.Store.(*metadata.DB)}
		o.Store = store
	})
	const repo = "hub/team/tool"
	d := digest.Digest(app.Digest.String())
	store.refuse(d)
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	h.gate.Sync()
	store.refuse("")
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	if img := h.image(repo, app.Digest); img.State != metadata.StateApproved || len(img.Tags) != 1 {
		t.Errorf("recorded on the next pull: %s, tags %v", img.State, img.Tags)
	}
}
