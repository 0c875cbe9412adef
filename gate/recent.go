package gate

import (
	"context"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// recentCapacity bounds the refused pulls the gate remembers: enough for
// an overview page, small enough to cost nothing.
const recentCapacity = 64

// Denial is one refused manifest request, as the console's overview lists
// it. Repeats of the same refusal (a client retrying, HEAD then GET) are
// folded into one entry whose Count grows.
type Denial struct {
	Time       time.Time     `json:"time"`
	Repository string        `json:"repository"` // "<upstream>/<repository>"
	Digest     digest.Digest `json:"digest"`
	// Tag is the tag the client asked for, if it asked by tag.
	Tag string `json:"tag,omitempty"`
	// State is the image's state when it was refused; empty for a
	// platform refused through its index.
	State metadata.State `json:"state,omitempty"`
	// Message is what the client was told.
	Message string `json:"message"`
	// Pending is set when the client was asked to retry while checks run.
	Pending bool  `json:"pending,omitempty"`
	Count   int64 `json:"count"`
}

// recentDenials is a ring of the last refusals. Its zero value is ready.
type recentDenials struct {
	mu   sync.Mutex
	ring [recentCapacity]Denial
	next int // where the next entry goes
	n    int // entries held, up to recentCapacity
}

func (r *recentDenials) add(d Denial) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n > 0 {
		last := &r.ring[(r.next+recentCapacity-1)%recentCapacity]
		if last.Repository == d.Repository && last.Digest == d.Digest && last.Tag == d.Tag && last.Message == d.Message {
			last.Count++
			last.Time = d.Time
			return
		}
	}
	d.Count = 1
	r.ring[r.next] = d
	r.next = (r.next + 1) % recentCapacity
	if r.n < recentCapacity {
		r.n++
	}
}

// RecentDenials returns up to limit of the latest refused manifest
// requests, newest first (limit <= 0: all it holds). They are kept in
// memory only: a restart forgets them, the audit log does not.
func (g *Gate) RecentDenials(limit int) []Denial {
	r := &g.recent
	r.mu.Lock()
	defer r.mu.Unlock()
	if limit <= 0 || limit > r.n {
		limit = r.n
	}
	out := make([]Denial, 0, limit)
	for i := 1; i <= limit; i++ {
		out = append(out, r.ring[(r.next+recentCapacity-i)%recentCapacity])
	}
	return out
}

// Admit decides whether the manifest s may be served (see admit) and
// remembers a refusal for [Gate.RecentDenials]. Only refusals pay for it.
func (g *Gate) Admit(ctx context.Context, s proxy.Subject) (proxy.Decision, error) {
	d, err := g.admit(ctx, s)
	if err != nil || d.Allow {
		return d, err
	}
	repo := s.Upstream + "/" + s.Repository
	den := Denial{Time: g.now(), Repository: repo, Digest: s.Digest, Tag: s.Tag,
		Message: d.Message, Pending: d.RetryAfter > 0}
	g.mu.RLock()
	if img := g.images[imageKey(repo, s.Digest)]; img != nil {
		den.State = stateOf(img, den.Time)
	}
	g.mu.RUnlock()
	g.recent.add(den)
	return d, nil
}
