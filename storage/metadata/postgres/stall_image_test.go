package postgres

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestImageReadGivesUp: reading an image state from a database that
// stopped answering without closing its connections fails within the
// store's bound, as every other read does, rather than waiting as long as
// the caller would (an admin's page, a replica following another's
// change).
func TestImageReadGivesUp(t *testing.T) {
	t.Parallel()
	const bound = 300 * time.Millisecond
	s, link := openStalling(t, bound)
	ctx := t.Context()
	const repo = "hub/app"
	d := digest.FromString("stalled image")
	if _, err := s.UpdateImage(ctx, repo, d, time.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StatePending
		return metadata.Change{Action: "scan"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	link.stall()
	cctx, cancel := context.WithTimeout(ctx, 20*bound)
	defer cancel()
	start := time.Now()
	_, err := s.Image(cctx, repo, d)
	took := time.Since(start)
	if err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Image with the database silent: %v; want an error that is not a miss", err)
	}
	if took > 5*bound {
		t.Errorf("Image with the database silent answered after %v; want within about %v", took.Round(time.Millisecond), bound)
	}
}
