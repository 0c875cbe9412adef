package alerts_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// openStore opens the bbolt store in dir, as airlock does, and closes it
// when the test ends (closeStore may do it first).
func openStore(t *testing.T, dir string) *metadata.DB {
	t.Helper()
	db, err := metadata.Open(filepath.Join(dir, "metadata.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func closeStore(t *testing.T, db *metadata.DB) {
	t.Helper()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// queue writes a state change of ev's image with the deliveries r routes
// for ev, as the gate does: one transaction, which also assigns each
// delivery its seq and the event its id and audit hash. It returns how
// many deliveries were queued.
func queue(t *testing.T, db *metadata.DB, r *alerts.Router, ev metadata.Event) int {
	t.Helper()
	deliveries := r.Route(ev)
	_, err := db.UpdateImage(t.Context(), ev.Repository, ev.Digest, time.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = ev.State
		img.Reasons = ev.Reasons
		img.Tags = ev.Tags
		return metadata.Change{Actor: ev.Actor, Action: "decide", Reason: "test change", Deliveries: deliveries}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return len(deliveries)
}
