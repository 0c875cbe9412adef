package alerts_test

// TEMPORARY in-memory outbox until *metadata.DB implements ImageStore.

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/storage/metadata"
)

type memStore struct {
	mu   sync.Mutex
	seq  uint64
	list []metadata.Delivery
}

var mems = map[string]*memStore{}
var memsMu sync.Mutex

func openStore(t *testing.T, dir string) *memStore {
	memsMu.Lock()
	defer memsMu.Unlock()
	if m, ok := mems[dir]; ok {
		return m
	}
	m := &memStore{}
	mems[dir] = m
	return m
}

func closeStore(t *testing.T, s *memStore) {}

func (m *memStore) DueDeliveries(ctx context.Context, now time.Time, limit int) ([]metadata.Delivery, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []metadata.Delivery
	for _, d := range m.list {
		if !d.NextAttempt.After(now) && len(out) < limit {
			out = append(out, d)
		}
	}
	return out, nil
}

func (m *memStore) Delivered(ctx context.Context, seq uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.list = slices.DeleteFunc(m.list, func(d metadata.Delivery) bool { return d.Seq == seq })
	return nil
}

func (m *memStore) RetryDelivery(ctx context.Context, seq uint64, next time.Time, lastErr string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.list {
		if m.list[i].Seq == seq {
			m.list[i].Attempts++
			m.list[i].NextAttempt = next
			m.list[i].LastError = lastErr
		}
	}
	return nil
}

// queue writes a state change of ev's image with the deliveries r routes
// for ev, as the gate does, and returns how many were queued.
func queue(t *testing.T, s *memStore, r *alerts.Router, ev metadata.Event) int {
	t.Helper()
	ds := r.Route(ev)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		s.seq++
		d.Seq = s.seq
		d.Event.ID = "mem-" + strconv.FormatUint(s.seq, 10)
		d.Event.Audit = "sha256:0000"
		s.list = append(s.list, d)
	}
	return len(ds)
}
