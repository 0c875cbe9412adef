package gate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Several replicas share one image store (PostgreSQL). Each keeps every
// state in memory, as one alone does, and a change made through one
// replica reaches the others as a notice naming the image: they read it
// again with Refresh. A notice can be lost (the listening connection
// dropped); the store then says "reset", and RefreshAll reads everything.
//
// The replica that made a change did the rest of it: the audit record and
// the alerts are written with the state, once, and its withdrawal of the
// blobs of an image that stopped being servable is a change to the links,
// which every replica reads from the same store. A refreshed replica
// withdraws once more all the same: a manifest this replica is still
// writing carries its admission in this replica's memory only, and would
// otherwise land admitted after the other replica's withdrawal.

// Refresh reads repo@d from the store again and puts it in memory as a
// local change would, or forgets it when the store no longer has it. Call
// it when another replica announced a change to the image.
func (g *Gate) Refresh(ctx context.Context, repo string, d digest.Digest) error {
	// Under the write lock: a local change of the same image in between
	// could otherwise be overwritten in memory by the older state read
	// here.
	g.write.Lock()
	defer g.write.Unlock()
	img, err := g.store.Image(ctx, repo, d)
	gone := errors.Is(err, storage.ErrNotFound)
	if err != nil && !gone {
		return fmt.Errorf("gate: reading %s after another replica changed it: %w", imageKey(repo, d), err)
	}
	now := g.now()
	key := imageKey(repo, d)
	g.mu.Lock()
	old := g.images[key]
	wasServable := old != nil && servable(old, now)
	switch {
	case gone && old != nil && !g.unrecorded[key] && g.landing[key] == 0:
		// (An image approved on sight whose record has not landed, or
		// is being written, stays: the store cannot know it yet.)
		g.forgetLocked(old)
	case !gone:
		g.remember(&img)
	}
	g.mu.Unlock()
	if gone {
		return nil
	}
	if old == nil || old.State != img.State {
		from := metadata.State("")
		if old != nil {
			from = old.State
		}
		g.log.LogAttrs(ctx, slog.LevelInfo, "image state changed on another replica", slog.String("image", key),
			slog.String("from", string(from)), slog.String("to", string(img.State)))
	}
	if wasServable && !servable(&img, now) {
		g.withdraw(ctx, &img)
	}
	return nil
}

// RefreshAll reads every image from the store again and replaces the
// gate's memory with them. Call it when notices of other replicas'
// changes may have been lost. Images approved on sight here whose records
// have not landed yet, or are being written, are kept.
func (g *Gate) RefreshAll(ctx context.Context) error {
	g.write.Lock()
	defer g.write.Unlock()
	var all []metadata.Image
	if err := g.store.EachImage(ctx, func(img metadata.Image) error {
		all = append(all, img)
		return nil
	}); err != nil {
		return fmt.Errorf("gate: reading every image state again: %w", err)
	}
	now := g.now()
	g.mu.Lock()
	old := g.images
	g.images = make(map[string]*metadata.Image, len(all))
	g.tags = map[string]digest.Digest{}
	g.parents = map[string][]string{}
	g.blocks = map[string]int{}
	g.artifacts = map[string]int{}
	unrecorded := g.unrecorded
	g.unrecorded = map[string]bool{}
	for i := range all {
		g.remember(&all[i])
	}
	for key, was := range old {
		if g.images[key] != nil || !unrecorded[key] && g.landing[key] == 0 {
			continue
		}
		g.remember(was)
		if unrecorded[key] {
			g.unrecorded[key] = true
		}
	}
	var withdraw []*metadata.Image
	for key, img := range g.images {
		if was := old[key]; was != nil && servable(was, now) && !servable(img, now) {
			withdraw = append(withdraw, img)
		}
	}
	g.mu.Unlock()
	for _, img := range withdraw {
		g.withdraw(ctx, img)
	}
	g.log.LogAttrs(ctx, slog.LevelInfo, "image states read again from the store", slog.Int("images", len(all)),
		slog.Int("withdrawn", len(withdraw)))
	return nil
}
