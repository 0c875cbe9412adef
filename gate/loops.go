package gate

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Intervals of the background work.
const (
	expiryEvery = time.Second
	flushEvery  = 10 * time.Second
)

// Run ends releases when they expire and writes pull counts, until ctx
// ends; then it writes the last counts.
func (g *Gate) Run(ctx context.Context) {
	g.withdrawRefused(ctx)
	expiry := time.NewTicker(expiryEvery)
	defer expiry.Stop()
	flush := time.NewTicker(flushEvery)
	defer flush.Stop()
	scans := time.NewTicker(requestScansEvery)
	defer scans.Stop()
	g.requestScans(ctx)
	g.syncScans(ctx)
	for {
		select {
		case <-ctx.Done():
			g.stopKicks()
			g.Flush(context.WithoutCancel(ctx))
			return
		case <-scans.C:
			g.requestScans(ctx)
			g.syncScans(ctx)
		case <-expiry.C:
			g.ExpireReleases(ctx)
			g.Recheck(ctx)
			g.retryPolicies(ctx)
		case <-flush.C:
			g.Flush(ctx)
		}
	}
}

// ExpireReleases ends every release whose time has come: the image gets
// its verdict's state again (quarantined, as a rule), with an audit record
// and an alert. It returns how many ended.
func (g *Gate) ExpireReleases(ctx context.Context) int {
	now := g.now()
	g.mu.RLock()
	var due []*metadata.Image
	for _, img := range g.images {
		if img.Override != nil && img.Override.Action == metadata.ActionRelease && !img.Override.Expires.IsZero() &&
			!now.Before(img.Override.Expires) {
			due = append(due, img)
		}
	}
	g.mu.RUnlock()
	if len(due) == 0 {
		return 0
	}
	g.write.Lock()
	defer g.write.Unlock()
	set := g.policies.Load()
	n := 0
	for _, img := range due {
		o := *img.Override
		_, err := g.change(ctx, img.Repository, img.Digest, now, func(cur *metadata.Image) (metadata.Change, error) {
			if cur.Override == nil || cur.Override.Action != metadata.ActionRelease || now.Before(cur.Override.Expires) {
				return metadata.Change{}, nil // renewed or lifted meanwhile
			}
			cur.Override = nil
			decide(set, cur, "", now)
			return metadata.Change{Actor: actorExpiry, Action: "expire", Expires: o.Expires,
				Reason: fmt.Sprintf("the release by %s (%s) ended at %s", o.By, o.Reason, o.Expires.UTC().Format(time.RFC3339))}, nil
		})
		if err != nil {
			g.log.LogAttrs(ctx, slog.LevelError, "ending an expired release failed; pulls are refused meanwhile, and it is retried",
				slog.String("image", imageKey(img.Repository, img.Digest)), slog.String("error", err.Error()))
			continue
		}
		n++
	}
	return n
}

// Recheck decides again every image whose verdict changes by itself by
// now (a waiver ended), and returns how many changed state.
func (g *Gate) Recheck(ctx context.Context) int {
	now := g.now()
	g.mu.RLock()
	var due []*metadata.Image
	for _, img := range g.images {
		if !img.Verdict.Recheck.IsZero() && !now.Before(img.Verdict.Recheck) {
			due = append(due, img)
		}
	}
	g.mu.RUnlock()
	if len(due) == 0 {
		return 0
	}
	g.write.Lock()
	defer g.write.Unlock()
	set := g.policies.Load()
	n := 0
	for _, img := range due {
		after, err := g.change(ctx, img.Repository, img.Digest, now, func(cur *metadata.Image) (metadata.Change, error) {
			if cur.Verdict.Recheck.IsZero() || now.Before(cur.Verdict.Recheck) {
				return metadata.Change{}, nil // decided again meanwhile
			}
			from := cur.State
			decide(set, cur, "", now)
			return metadata.Change{Actor: actorExpiry, Action: decided(from, cur), Reason: "a waiver ended"}, nil
		})
		if err != nil {
			g.log.LogAttrs(ctx, slog.LevelError, "deciding an image again after a waiver ended failed; it is retried",
				slog.String("image", imageKey(img.Repository, img.Digest)), slog.String("error", err.Error()))
			continue
		}
		if after.State != img.State {
			n++
		}
	}
	return n
}

// retryPolicies decides again the images a SetPolicies could not record.
func (g *Gate) retryPolicies(ctx context.Context) {
	if !g.undecided.Load() {
		return
	}
	if n, err := g.SetPolicies(ctx, g.policies.Load()); err != nil {
		g.log.LogAttrs(ctx, slog.LevelError, "deciding images again under the policies failed; retrying",
			slog.String("error", err.Error()))
	} else if n > 0 {
		g.log.LogAttrs(ctx, slog.LevelInfo, "images changed state under the policies on a retry", slog.Int("images", n))
	}
}

// withdrawRefused withdraws the blobs of every image that may not be
// served. A state change commits before its withdrawal runs, so a crash
// in between leaves blobs readable under a refused image; this finishes
// such withdrawals after a restart. For an image whose withdrawal is done
// it costs one read where the content says what is admitted.
func (g *Gate) withdrawRefused(ctx context.Context) {
	now := g.now()
	g.mu.RLock()
	var refused, settled []*metadata.Image
	for _, img := range g.images {
		switch {
		case servable(img, now):
		case g.artifacts[img.Repository] > 0 || len(img.Platforms) > 0:
			// An artifact, or a platform, may hold its blobs.
			refused = append(refused, img)
		default:
			settled = append(settled, img)
		}
	}
	g.mu.RUnlock()
	a, _ := g.content.(admissions)
	for _, img := range settled {
		if a == nil || a.Admitted(ctx, img.Repository, img.Digest) {
			refused = append(refused, img)
		}
	}
	for _, img := range refused {
		if ctx.Err() != nil {
			return
		}
		g.withdraw(ctx, img)
	}
}

// admissions is a Content that can say whether a manifest's admission is
// in force (the proxy can): the sweep then skips what was withdrawn.
type admissions interface {
	Admitted(ctx context.Context, repo string, d digest.Digest) bool
}

// Flush writes the pull counts gathered since the last flush.
func (g *Gate) Flush(ctx context.Context) {
	// Counts of images approved on sight are kept once their records
	// land; the store skips images it does not hold.
	g.Sync()
	g.statsMu.Lock()
	stats := make([]metadata.PullStat, 0, len(g.stats))
	for _, c := range g.stats {
		stats = append(stats, c.stat)
	}
	clear(g.stats)
	g.statsMu.Unlock()
	if len(stats) == 0 {
		return
	}
	// The store keeps the counts; memory keeps only what decisions need.
	if err := g.store.RecordPulls(ctx, stats); err != nil {
		g.log.LogAttrs(ctx, slog.LevelWarn, "recording pull counts failed; those counts are lost",
			slog.Int("images", len(stats)), slog.String("error", err.Error()))
	}
}
