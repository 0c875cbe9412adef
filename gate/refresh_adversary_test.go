package gate_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// slowReads holds the gate's reads of one image until released, as a
// refresh's read of a busy database does, and fails its writes while
// set.
type slowReads struct {
	refusingWrites
	mu      sync.Mutex
	hold    digest.Digest
	holdAll bool
	reading chan struct{}
	release chan struct{}
}

func (s *slowReads) Image(ctx context.Context, repo string, d digest.Digest) (metadata.Image, error) {
	s.mu.Lock()
	held := s.hold == d && !s.holdAll
	s.mu.Unlock()
	if held {
		close(s.reading)
		<-s.release
	}
	return s.refusingWrites.Image(ctx, repo, d)
}

func (s *slowReads) EachImage(ctx context.Context, fn func(metadata.Image) error) error {
	s.mu.Lock()
	held := s.holdAll
	s.mu.Unlock()
	if held {
		close(s.reading)
		<-s.release
	}
	return s.refusingWrites.EachImage(ctx, fn)
}

// A refresh that read the store before the record of an image approved
// on sight here landed finds no record. It must not forget the image: its
// blobs are served already, and a block placed afterwards (the record's
// write having failed) would otherwise not know to withdraw them.
func TestRefreshKeepsImageApprovedOnSightWhoseRecordIsOnTheWay(t *testing.T) {
	t.Parallel()
	for _, all := range []bool{false, true} {
		t.Run(map[bool]string{false: "Refresh", true: "RefreshAll"}[all], func(t *testing.T) {
			t.Parallel()
			testRefreshKeepsImageOnTheWay(t, all)
		})
	}
}

func testRefreshKeepsImageOnTheWay(t *testing.T, all bool) {
	up := upstreamtest.New(t, upstreamtest.Options{})
	app := up.PushImage(t, "team/app", "1", 256, 1)
	const repo = "hub/team/app"
	d := digest.Digest(app.Digest.String())
	var store *slowReads
	h := newHarnessWith(t, up, t.TempDir(), "", func(o *gate.Options) {
		store = &slowReads{refusingWrites: refusingWrites{DB: o.Store.(*metadata.DB)},
			reading: make(chan struct{}), release: make(chan struct{})}
		o.Store = store
	})
	ctx := t.Context()
	store.mu.Lock()
	store.hold, store.holdAll = d, all
	store.mu.Unlock()
	refreshed := make(chan error, 1)
	go func() {
		if all {
			refreshed <- h.gate.RefreshAll(ctx)
		} else {
			refreshed <- h.gate.Refresh(ctx, repo, d)
		}
	}()
	select {
	case <-store.reading:
	case <-time.After(10 * time.Second):
		t.Fatal("the refresh did not read the store")
	}
	// The refresh has read "not found"; meanwhile the image is pulled.
	store.refuse(d)
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	h.wantStatus(blobPath(repo, app.Layers[0]), http.StatusOK)
	close(store.release)
	if err := <-refreshed; err != nil {
		t.Fatal(err)
	}
	h.gate.Sync()
	store.refuse("")

	if _, err := h.gate.Block(ctx, repo, d, "admin:bob", "incident"); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(blobPath(repo, app.Layers[0]), http.StatusForbidden)
}
