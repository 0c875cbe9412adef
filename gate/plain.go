package gate

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// maxPlainWrites bounds the first sights of plain images being recorded in
// the background; past it, a pull records its own.
const maxPlainWrites = 16

// observePlain approves on sight an image in a repository no policy and no
// block governs, as a plain cache would serve it, and records it in the
// background. Recording there commits (fsyncs) the metadata file, which can
// wait behind the dirty pages of other pulls' blobs on the same disk for
// longer than the whole pull takes otherwise; nothing on a pull of
// approved content waits for a disk write. A crash before the record lands
// only means the image is approved on sight again on its next pull. It
// returns nil when the background is full: the caller records it itself.
func (g *Gate) observePlain(repo string, s proxy.Subject, now time.Time) *metadata.Image {
	select {
	case g.plainWrites <- struct{}{}:
	default:
		return nil
	}
	if !g.syncing.TryLock() {
		// A Sync is waiting for the records so far, and a WaitGroup must
		// not be added to from zero while it is waited on: this pull
		// records its own rather than wait for the Sync.
		<-g.plainWrites
		return nil
	}
	key := imageKey(repo, s.Digest)
	g.mu.Lock()
	// Loaded under mu: SetPolicies stores its policies before it lists
	// the images in memory under mu, so an approval decided under the
	// policies it replaces is among those it decides again. Loaded
	// before, it could be missed, and stand under policies that refuse
	// it should its record fail to land.
	set := g.policies.Load()
	var img metadata.Image
	if cur := g.images[key]; cur != nil {
		img = *cur
		img.Tags = slices.Clone(cur.Tags)
	} else {
		img = metadata.Image{Repository: repo, Digest: s.Digest, FirstSeen: now, Tags: []string{}, Reasons: []metadata.Reason{}}
	}
	if img.MediaType == "" {
		img.MediaType = s.MediaType
		img.Platforms = platforms(s.MediaType, s.Body)
	}
	if s.Tag != "" && !slices.Contains(img.Tags, s.Tag) {
		img.Tags = append(img.Tags, s.Tag)
		slices.Sort(img.Tags)
	}
	img.UpdatedAt = now
	decide(set, &img, s.Tag, now)
	if !policySafe(&img) {
		g.mu.Unlock()
		g.syncing.Unlock()
		<-g.plainWrites
		return nil
	}
	// The tag's last digest: remembering points the tag at this image,
	// and the record must still take the tag from that one.
	var was digest.Digest
	if s.Tag != "" {
		was = g.tags[repo+":"+s.Tag]
	}
	g.remember(&img)
	g.landing[key]++
	g.mu.Unlock()

	g.background.Add(1)
	g.syncing.Unlock()
	go func() {
		defer g.background.Done()
		defer func() { <-g.plainWrites }()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := g.observe(ctx, repo, s, now, was, "")
		g.mu.Lock()
		if g.landing[key]--; g.landing[key] <= 0 {
			delete(g.landing, key)
		}
		g.mu.Unlock()
		if err != nil {
			// Kept in memory (a block must still see what it served), but
			// not known: answered from memory it would never be recorded
			// (nor listed, nor its pulls counted) until a restart.
			g.mu.Lock()
			if g.images[key] == &img {
				g.unrecorded[key] = true
			}
			g.mu.Unlock()
			g.log.LogAttrs(ctx, slog.LevelWarn, "recording an image approved on sight failed; it is approved again on its next pull",
				slog.String("image", key), slog.String("error", err.Error()))
		}
	}()
	return &img
}

// policySafe reports whether a provisional decision may stand before it is
// recorded: only a plain approval, never an admin's decision or a refusal.
func policySafe(img *metadata.Image) bool {
	return img.State == metadata.StateApproved && img.Override == nil && len(img.Verdict.Policies) == 0
}

// Sync waits until the images approved on sight so far are recorded.
func (g *Gate) Sync() {
	g.syncing.Lock()
	defer g.syncing.Unlock()
	g.background.Wait()
}
