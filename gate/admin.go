package gate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Release lets repo@d through despite its verdict until expires (zero: no
// end). It applies to a quarantined or pending image, or renews a release;
// a blocked image must be unblocked first, and an approved one needs none.
func (g *Gate) Release(ctx context.Context, repo string, d digest.Digest, actor, reason string, expires time.Time) (metadata.Image, error) {
	now := g.now()
	if err := checkReason(reason); err != nil {
		return metadata.Image{}, err
	}
	if !expires.IsZero() && !expires.After(now) {
		return metadata.Image{}, fmt.Errorf("%w: the expiry %s is not in the future", ErrInvalid, expires.UTC().Format(time.RFC3339))
	}
	img, err := g.adminChange(ctx, repo, d, now, true, func(img *metadata.Image) error {
		switch st := stateOf(img, now); st {
		case metadata.StateBlocked:
			return fmt.Errorf("%w: %s is blocked (%s); unblock it first", ErrConflict, imageKey(repo, d), img.Override.Reason)
		case metadata.StateApproved:
			return fmt.Errorf("%w: %s is approved; there is nothing to release", ErrConflict, imageKey(repo, d))
		}
		img.Override = &metadata.Override{Action: metadata.ActionRelease, By: actor, Reason: reason, At: now, Expires: expires}
		return nil
	}, metadata.Change{Actor: actor, Action: metadata.ActionRelease, Reason: reason, Expires: expires})
	return img, err
}

// Block refuses repo@d whatever its verdict and any release. The digest
// need not have been seen: an admin may block a known-bad digest before
// anyone pulls it.
func (g *Gate) Block(ctx context.Context, repo string, d digest.Digest, actor, reason string) (metadata.Image, error) {
	if err := checkReason(reason); err != nil {
		return metadata.Image{}, err
	}
	if g.known != nil && !g.known(repo) {
		hint := "check the upstream name and its allowed repositories"
		if strings.Count(repo, "/") == 1 {
			hint += "; Docker Hub's official images are <upstream>/library/<name>"
		}
		return metadata.Image{}, fmt.Errorf("repository %s is not served by airlock (%s): %w", repo, hint, storage.ErrNotFound)
	}
	now := g.now()
	return g.adminChange(ctx, repo, d, now, false, func(img *metadata.Image) error {
		if img.State == metadata.StateBlocked {
			return fmt.Errorf("%w: %s is already blocked", ErrConflict, imageKey(repo, d))
		}
		img.Override = &metadata.Override{Action: metadata.ActionBlock, By: actor, Reason: reason, At: now}
		return nil
	}, metadata.Change{Actor: actor, Action: metadata.ActionBlock, Reason: reason})
}

// Unblock lifts a block: the image gets its verdict's state again.
func (g *Gate) Unblock(ctx context.Context, repo string, d digest.Digest, actor, reason string) (metadata.Image, error) {
	if err := checkReason(reason); err != nil {
		return metadata.Image{}, err
	}
	return g.adminChange(ctx, repo, d, g.now(), true, func(img *metadata.Image) error {
		if img.Override == nil || img.Override.Action != metadata.ActionBlock {
			return fmt.Errorf("%w: %s is not blocked", ErrConflict, imageKey(repo, d))
		}
		img.Override = nil
		return nil
	}, metadata.Change{Actor: actor, Action: "unblock", Reason: reason})
}

// Rescan runs the image's checks again, signatures included, and records
// the result.
func (g *Gate) Rescan(ctx context.Context, repo string, d digest.Digest, actor string) (metadata.Image, error) {
	g.mu.RLock()
	img := g.images[imageKey(repo, d)]
	g.mu.RUnlock()
	if img == nil {
		return metadata.Image{}, fmt.Errorf("airlock has not seen %s: %w", imageKey(repo, d), storage.ErrNotFound)
	}
	if set := g.policies.Load(); g.scanner != nil && needsScan(set, img) {
		// The new scan's results arrive through ScanResult; until then
		// the image keeps the state its last scan gave it.
		if err := g.scanner.Rescan(ctx, scanner.Job{Repository: repo, Digest: d}); err != nil {
			return metadata.Image{}, fmt.Errorf("queuing a new vulnerability scan of %s: %w", imageKey(repo, d), err)
		}
	}
	for {
		set := g.policies.Load()
		var sigs []metadata.SignatureEvidence
		if img.Artifact == "" {
			var err error
			if sigs, err = g.gather(ctx, set, repo, d, img.MediaType, nil); err != nil {
				return metadata.Image{}, err
			}
		}
		rec, err := g.adminChange(ctx, repo, d, g.now(), true, func(cur *metadata.Image) error {
			if g.policies.Load() != set {
				// Replaced while the signatures were checked: the
				// evidence is of the old trust. Check again.
				return errPoliciesChanged
			}
			if cur.Artifact == "" {
				cur.Verdict.Signatures = sigs
			}
			return nil
		}, metadata.Change{Actor: actor, Action: "rescan", Reason: "checks run again on request"})
		if !errors.Is(err, errPoliciesChanged) {
			return rec, err
		}
	}
}

// errPoliciesChanged aborts a change decided under policies since replaced.
var errPoliciesChanged = errors.New("the policies changed while the image was checked")

// Delete removes repo@d's cached manifest and the blobs nothing else uses.
// An image with an admin decision keeps its record, so that a block
// survives the deletion of what it blocked; any other is forgotten.
func (g *Gate) Delete(ctx context.Context, repo string, d digest.Digest, actor, reason string) error {
	// An image approved on sight may have its record on the way (it
	// would land after the delete and bring the image back): wait for it.
	g.Sync()
	g.write.Lock()
	defer g.write.Unlock()
	g.mu.RLock()
	img := g.images[imageKey(repo, d)]
	g.mu.RUnlock()
	if img == nil {
		return fmt.Errorf("no image %s: %w", imageKey(repo, d), storage.ErrNotFound)
	}
	if reason == "" {
		reason = "cached content deleted"
	}
	now := g.now()
	c := metadata.Change{Actor: actor, Action: "delete", Reason: reason}
	if img.Override != nil {
		if _, err := g.change(ctx, repo, d, now, func(*metadata.Image) (metadata.Change, error) { return c, nil }); err != nil {
			return err
		}
	} else {
		err := g.store.DeleteImage(ctx, repo, d, now, c)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		// Not found: approved on sight and its record never landed (the
		// write failed); memory and the cache are all there is to delete.
		g.mu.Lock()
		g.forgetLocked(img)
		g.mu.Unlock()
	}
	if err := g.content.Remove(ctx, repo, d); err != nil {
		return fmt.Errorf("removing the cached content of %s: %w", imageKey(repo, d), err)
	}
	return nil
}

// adminChange applies an admin's edit to a known image (or, unless mustExist,
// a new one), decides it again and records it.
func (g *Gate) adminChange(ctx context.Context, repo string, d digest.Digest, now time.Time, mustExist bool,
	edit func(img *metadata.Image) error, c metadata.Change) (metadata.Image, error) {
	if err := d.Validate(); err != nil {
		return metadata.Image{}, fmt.Errorf("%w: %q is not a digest: %v", ErrInvalid, d, err)
	}
	g.write.Lock()
	defer g.write.Unlock()
	g.mu.RLock()
	known := g.images[imageKey(repo, d)] != nil
	g.mu.RUnlock()
	if mustExist && !known {
		return metadata.Image{}, fmt.Errorf("airlock has not seen %s: %w", imageKey(repo, d), storage.ErrNotFound)
	}
	set := g.policies.Load()
	img, err := g.change(ctx, repo, d, now, func(img *metadata.Image) (metadata.Change, error) {
		if err := edit(img); err != nil {
			return metadata.Change{}, err
		}
		decide(set, img, "", now)
		return c, nil
	})
	if err != nil {
		return metadata.Image{}, err
	}
	return *img, nil
}

func checkReason(reason string) error {
	if strings.TrimSpace(reason) == "" {
		return fmt.Errorf("%w: a reason is required; say why, for the audit log", ErrInvalid)
	}
	if len(reason) > 4096 {
		return fmt.Errorf("%w: the reason is %d bytes; keep it under 4096", ErrInvalid, len(reason))
	}
	return nil
}
