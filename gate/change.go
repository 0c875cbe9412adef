package gate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Actors the gate records for its own changes.
const (
	actorPolicy = "policy"
	actorExpiry = "expiry"
)

// observe decides an image seen for the first time, or under a tag not yet
// known to resolve to it, and records the result. A tag that resolved to
// another digest before is taken from that image, which is decided again
// without it. was, when set, is the digest the tag resolved to before an
// approval on sight pointed it at s.Digest in memory (plain.go).
//
// via, when set, is the servable index s is pulled through, where a policy
// checks vulnerabilities: s is recorded as its platform (its signatures
// and pins are the index's business) and scanned on its own.
func (g *Gate) observe(ctx context.Context, repo string, s proxy.Subject, now time.Time, was, via digest.Digest) (*metadata.Image, error) {
	artifact := signatureArtifact(s.MediaType, s.Body)
	subject := artifactSubject(s.Body, s.Tag)
	if subject == "" || subject == s.Digest {
		// A signature of nothing in particular is judged as an image.
		artifact = ""
	}
	var (
		set  *policy.Set
		sigs []metadata.SignatureEvidence
		scan *metadata.Scan
	)
	for {
		set = g.policies.Load()
		scan = nil
		if artifact == "" && !isIndex(s.MediaType) && set.Scans(repo) {
			// Queued before the write lock: the scanner reports through
			// ScanResult, which takes it.
			scan = g.scanFor(ctx, repo, s.Digest)
		}
		if artifact == "" && via == "" {
			g.mu.RLock()
			var have []metadata.SignatureEvidence
			if known := g.images[imageKey(repo, s.Digest)]; known != nil {
				have = known.Verdict.Signatures
			}
			g.mu.RUnlock()
			var err error
			// Verifying reads the signatures from the upstream: outside the
			// write lock, so other images are decided meanwhile.
			if sigs, err = g.gather(ctx, set, repo, s.Digest, s.MediaType, have); err != nil {
				return nil, err
			}
		}
		g.write.Lock()
		if g.policies.Load() == set {
			break
		}
		// The policies were replaced while the signatures were checked:
		// SetPolicies did not see this image, so it is decided under the
		// new ones here.
		g.write.Unlock()
	}
	defer g.write.Unlock()
	img, err := g.change(ctx, repo, s.Digest, now, func(img *metadata.Image) (metadata.Change, error) {
		if img.MediaType == "" {
			// First sight of the content (the record may be older: a
			// block placed before anyone pulled it).
			img.MediaType = s.MediaType
			img.Platforms = platforms(s.MediaType, s.Body)
		}
		if via != "" && img.Index == "" && artifact == "" {
			img.Index = via
		}
		if artifact != "" {
			img.Artifact, img.Subject = artifact, subject
		} else if via == "" {
			img.Verdict.Signatures = sigs
		}
		g.mu.RLock()
		if known := g.scans[s.Digest]; newerScan(known, scan) {
			// A result reported while this pull queued the scan.
			scan = known
		}
		g.mu.RUnlock()
		if scan != nil && newerScan(scan, img.Scan) {
			cp := *scan
			img.Scan = &cp
		}
		if s.Tag != "" && !slices.Contains(img.Tags, s.Tag) {
			img.Tags = append(img.Tags, s.Tag)
			slices.Sort(img.Tags)
		}
		from := img.State
		decide(set, img, s.Tag, now)
		return metadata.Change{Actor: actorPolicy, Action: decided(from, img)}, nil
	})
	if err != nil {
		return nil, err
	}
	if s.Tag == "" {
		return img, nil
	}
	g.mu.RLock()
	prev, moved := g.tags[repo+":"+s.Tag], false
	if prev == s.Digest && was != "" {
		prev = was
	}
	if prev != "" && prev != s.Digest && g.images[imageKey(repo, prev)] != nil {
		moved = true
	}
	g.mu.RUnlock()
	if moved {
		_, err := g.change(ctx, repo, prev, now, func(old *metadata.Image) (metadata.Change, error) {
			old.Tags = slices.DeleteFunc(old.Tags, func(t string) bool { return t == s.Tag })
			from := old.State
			decide(set, old, "", now)
			return metadata.Change{Actor: actorPolicy, Action: decided(from, old),
				Reason: fmt.Sprintf("tag %s now resolves to %s", s.Tag, s.Digest)}, nil
		})
		if err != nil {
			g.log.LogAttrs(ctx, slog.LevelWarn, "recording that a tag moved failed", slog.String("image", imageKey(repo, prev)),
				slog.String("tag", s.Tag), slog.String("error", err.Error()))
		}
	}
	g.mu.Lock()
	g.tags[repo+":"+s.Tag] = s.Digest
	g.mu.Unlock()
	return img, nil
}

// decided is the audit action of a policy decision that moved img from
// from: "decide" when its state changed, "" (no record) otherwise.
func decided(from metadata.State, img *metadata.Image) string {
	if img.State != from {
		return "decide"
	}
	return ""
}

// decide sets img's verdict under set, with the signature evidence in its
// verdict, and its state and reasons under its override, at now. tag, when
// set, is the tag being pulled: pins name it first. A signature artifact
// is approved whatever the policies say.
func decide(set *policy.Set, img *metadata.Image, tag string, now time.Time) {
	// A tag the pins now give to other digests has moved on; airlock only
	// learns that from a pull of it. Kept, it would refuse the image for
	// a tag nobody pulls it by any more, under every other tag too (an
	// old release, still pinned as 1.0, when latest moves on). The tag
	// being pulled stays: that pull is judged by it.
	// (A copy: img may be a copy of an image in memory, sharing its tags.)
	img.Tags = slices.DeleteFunc(slices.Clone(img.Tags), func(t string) bool {
		return t != tag && set.TagMoved(img.Repository, img.Digest, t)
	})
	if img.Artifact != "" {
		img.Verdict = metadata.Verdict{State: metadata.StateApproved, DecidedAt: now}
	} else {
		tags := img.Tags
		if tag != "" {
			tags = append([]string{tag}, slices.DeleteFunc(slices.Clone(img.Tags), func(t string) bool { return t == tag })...)
		}
		img.Verdict = set.Evaluate(policy.Subject{Repository: img.Repository, Digest: img.Digest, Tags: tags,
			Signatures: img.Verdict.Signatures, Kind: kindOf(img), Scan: img.Scan, Indexes: indexesOf(img)}, now)
	}
	img.State, img.Reasons = policy.Effective(img.Verdict, img.Override, now)
}

// indexesOf is the index a platform recorded on its own was pulled
// through: statements about the index (VEX) speak for its platforms.
func indexesOf(img *metadata.Image) []digest.Digest {
	if img.Index == "" {
		return nil
	}
	return []digest.Digest{img.Index}
}

// change applies fn to the stored image and to memory, adds the alerts of
// the resulting transition, and withdraws the image's blobs when it stopped
// being servable. Callers hold g.write.
func (g *Gate) change(ctx context.Context, repo string, d digest.Digest, now time.Time, fn func(img *metadata.Image) (metadata.Change, error)) (*metadata.Image, error) {
	var (
		from        metadata.State
		wasServable bool
		sawContent  bool
		actor       string
		queued      bool
	)
	// A platform served through its index has no record of its own, but
	// its blobs were admitted all the same: a first record that refuses
	// it (a block) must withdraw them too.
	key := imageKey(repo, d)
	g.mu.RLock()
	p := g.parentLocked(key, now)
	viaIndex := g.images[key] == nil && p != nil && servable(p, now)
	// An image approved on sight is served before its record lands
	// (plain.go): what it admitted must be withdrawn as well.
	var seen metadata.Image
	if cur := g.images[key]; cur != nil {
		seen = metadata.Image{MediaType: cur.MediaType, Platforms: slices.Clone(cur.Platforms), Tags: slices.Clone(cur.Tags)}
	}
	provisional := g.images[key] != nil && policy.Servable(g.images[key].State)
	g.mu.RUnlock()
	img, err := g.store.UpdateImage(ctx, repo, d, now, func(img *metadata.Image) (metadata.Change, error) {
		from = img.State
		// The stored state, expired release or not: what was admitted
		// under it must be withdrawn.
		wasServable = !img.FirstSeen.IsZero() && policy.Servable(img.State) || img.FirstSeen.IsZero() && (viaIndex || provisional)
		if img.FirstSeen.IsZero() && img.MediaType == "" && seen.MediaType != "" {
			// The first record of an image approved on sight whose own
			// record has not landed (an admin's block, a reload won the
			// race, or its write failed): it keeps what memory saw, or
			// replacing memory with it would forget the index's
			// platforms, which are then neither refused nor withdrawn.
			img.MediaType, img.Platforms = seen.MediaType, seen.Platforms
			if len(img.Tags) == 0 && seen.Tags != nil {
				img.Tags = seen.Tags
			}
		}
		unseen := img.MediaType == ""
		c, err := fn(img)
		if err != nil {
			return c, err
		}
		sawContent = unseen && img.MediaType != ""
		actor = c.Actor
		if ev := eventType(from, img, c.Actor); ev != "" {
			c.Deliveries = append(c.Deliveries, g.route(eventFor(ev, from, img, c, now))...)
		}
		queued = len(c.Deliveries) > 0
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	if queued {
		// Committed: the deliverer sends them now, not at its next poll.
		g.delivered()
	}
	stored := &img
	g.mu.Lock()
	g.remember(stored)
	g.mu.Unlock()
	if img.State != from {
		g.metrics.transition(img.State, byOf(actor))
		for _, r := range img.Reasons {
			if r.Policy != "" {
				g.metrics.finding(r.Policy, r.Mode)
			}
		}
		g.log.LogAttrs(ctx, slog.LevelInfo, "image state changed", slog.String("image", imageKey(repo, d)),
			slog.String("from", string(from)), slog.String("to", string(img.State)), slog.String("reason", summary(stored)))
	}
	g.mu.RLock()
	artifacts := g.artifacts[repo] > 0
	g.mu.RUnlock()
	if !servable(stored, now) && (wasServable || sawContent && (artifacts || g.admitted(ctx, repo, d))) {
		// Refused on first sight where signature artifacts are: one may
		// have listed, and admitted, this image's blobs. Or it was
		// approved on sight and served, and its record was lost (a crash
		// before the background write, a failed write) before a policy
		// came to refuse it: the cache still holds that admission.
		g.withdraw(ctx, stored)
	}
	return stored, nil
}

// admitted reports whether the cache admitted repo@d's blobs; a Content
// that cannot tell is taken to have.
func (g *Gate) admitted(ctx context.Context, repo string, d digest.Digest) bool {
	a, ok := g.content.(admissions)
	return !ok || a.Admitted(ctx, repo, d)
}

// withdraw makes img's blobs, and its platforms' where no servable image
// lists them, unreadable in its repository.
func (g *Gate) withdraw(ctx context.Context, img *metadata.Image) {
	servableHere := func(d digest.Digest) bool { return g.servableIn(img.Repository, d) }
	// A signature artifact is approved on sight, so what it lists keeps
	// no blob readable: its blobs are the upstream's choice, and could be
	// the layers of the image withdrawn.
	keeps := func(d digest.Digest) bool { return servableHere(d) && !g.artifactIn(img.Repository, d) }
	digests := []digest.Digest{img.Digest}
	for _, p := range img.Platforms {
		digests = append(digests, p.Digest)
	}
	for _, d := range digests {
		if servableHere(d) {
			continue
		}
		if err := g.content.Withdraw(ctx, img.Repository, d, keeps); err != nil {
			g.log.LogAttrs(ctx, slog.LevelError, "withdrawing the blobs of an image that may no longer be served failed; they stay readable by digest until it is retried",
				slog.String("image", imageKey(img.Repository, d)), slog.String("error", err.Error()))
		}
	}
}

// Servable reports whether the manifest d may be served in upstream/repo
// now, deciding nothing: its image is servable, or it is a platform of a
// servable index and not blocked itself. A manifest the gate has not seen
// is not servable. It implements proxy.Rechecker.
func (g *Gate) Servable(upstream, repo string, d digest.Digest) bool {
	return g.servableIn(upstream+"/"+repo, d)
}

// Artifact reports whether the manifest d in upstream/repo is a signature
// artifact, approved on sight rather than by the policies. It implements
// proxy.Rechecker.
func (g *Gate) Artifact(upstream, repo string, d digest.Digest) bool {
	return g.artifactIn(upstream+"/"+repo, d)
}

func (g *Gate) artifactIn(repo string, d digest.Digest) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	i := g.images[imageKey(repo, d)]
	return i != nil && i.Artifact != ""
}

func (g *Gate) servableIn(repo string, d digest.Digest) bool {
	now := g.now()
	g.mu.RLock()
	defer g.mu.RUnlock()
	key := imageKey(repo, d)
	i := g.images[key]
	if i != nil && servable(i, now) {
		if i.Index != "" {
			// A platform recorded on its own: only with a servable index.
			p := g.parentLocked(key, now)
			return p != nil && servable(p, now)
		}
		return true
	}
	if i != nil && i.Index != "" {
		return false // refused on its own (its scan), whatever its index
	}
	if blocked(i) {
		return false // not even through a servable index
	}
	p := g.parentLocked(key, now)
	return p != nil && servable(p, now)
}

// eventType is the alert a transition of img from from raises, or "".
func eventType(from metadata.State, img *metadata.Image, actor string) string {
	if img.State == from {
		return ""
	}
	switch img.State {
	case metadata.StateQuarantined:
		if from == metadata.StateReleased && actor == actorExpiry {
			return config.EventReleaseExpired
		}
		return config.EventQuarantined
	case metadata.StateBlocked:
		return config.EventBlocked
	case metadata.StateReleased:
		return config.EventReleased
	}
	if from == metadata.StateReleased && actor == actorExpiry {
		return config.EventReleaseExpired
	}
	return ""
}

func eventFor(typ string, from metadata.State, img *metadata.Image, c metadata.Change, now time.Time) metadata.Event {
	return metadata.Event{Type: typ, Time: now, Repository: img.Repository, Digest: img.Digest, From: from,
		State: img.State, Reasons: img.Reasons, Actor: c.Actor, Reason: c.Reason, Expires: c.Expires,
		Tags: slices.Clone(img.Tags)}
}

func (g *Gate) route(ev metadata.Event) []metadata.Delivery {
	b := g.alerts.Load()
	if b == nil || b.r == nil {
		return nil
	}
	return b.r.Route(ev)
}

// byOf names who made a transition, for the metric: an admin, the expiry
// of a release, or policy.
func byOf(actor string) string {
	switch {
	case strings.HasPrefix(actor, "admin"):
		return "admin"
	case actor == actorExpiry:
		return "expiry"
	}
	return "policy"
}

// SetAlerts replaces the alert router (on reload).
func (g *Gate) SetAlerts(r Router) { g.alerts.Store(&routerBox{r}) }

// SetPolicies replaces the policies and decides again every image whose
// verdict they change, recording each transition; signatures are checked
// again where the trust material changed. It returns how many images
// changed state. An image whose signatures cannot be checked now is
// pending (under an enforcing policy) until Run checks it again; one whose
// change cannot be written keeps its state until Run decides it again:
// known images are answered from memory, so their next pull would not.
func (g *Gate) SetPolicies(ctx context.Context, set *policy.Set) (int, error) {
	// Under the write lock: a first pull records its image either before
	// this (and it is among those decided again below) or after, under
	// the new policies (observe checks they are the ones it used).
	g.write.Lock()
	g.policies.Store(set)
	g.undecided.Store(false)
	now := g.now()
	g.mu.RLock()
	all := make([]*metadata.Image, 0, len(g.images))
	for _, img := range g.images {
		all = append(all, img)
	}
	g.mu.RUnlock()
	g.write.Unlock()
	changed, failed := 0, 0
	var first error
	fail := func(err error) {
		failed++
		if first == nil {
			first = err
		}
	}
	for _, img := range all {
		sigs := img.Verdict.Signatures
		if img.Artifact == "" {
			fresh, err := g.gather(ctx, set, img.Repository, img.Digest, img.MediaType, sigs)
			if err != nil {
				// Retried by Run. Meanwhile the image is decided without
				// the evidence it lacks: an enforcing policy whose trust
				// changed holds it pending, rather than leaving it served
				// on the old trust for as long as the upstream (a hostile
				// one, say) keeps its signatures unreadable.
				fail(err)
				fresh = sigs
			}
			sigs = fresh
		}
		next := *img
		next.Verdict.Signatures = sigs
		decide(set, &next, "", now)
		// Waivers count too: a reload that moves a waiver's end changes
		// nothing else, and the old end would stand.
		if next.State == img.State && sameReasons(next.Reasons, img.Reasons) && sameEvidence(next.Verdict.Signatures, img.Verdict.Signatures) &&
			next.Verdict.Recheck.Equal(img.Verdict.Recheck) && slices.Equal(next.Verdict.Waived, img.Verdict.Waived) {
			continue
		}
		before := img.State
		g.write.Lock()
		after, err := g.change(ctx, img.Repository, img.Digest, now, func(cur *metadata.Image) (metadata.Change, error) {
			if g.policies.Load() != set {
				// A newer SetPolicies replaced these while this image was
				// checked; it decides every image itself.
				return metadata.Change{}, errPoliciesChanged
			}
			if cur.Artifact == "" {
				cur.Verdict.Signatures = sigs
			}
			decide(set, cur, "", now)
			return metadata.Change{Actor: actorPolicy, Action: "redecide", Reason: "the policies changed"}, nil
		})
		g.write.Unlock()
		if errors.Is(err, errPoliciesChanged) {
			return changed, nil
		}
		if err != nil {
			// The others are decided all the same; this one is retried.
			fail(fmt.Errorf("deciding %s again under the new policies: %w", imageKey(img.Repository, img.Digest), err))
			continue
		}
		if after.State != before {
			changed++
		}
	}
	// A policy that checks vulnerabilities may now cover images never
	// scanned.
	g.requestScans(ctx)
	if first != nil {
		g.undecided.Store(true)
		return changed, fmt.Errorf("%d of %d images wait for a retry (pending if their signatures could not be checked, else in their old state); the first: %w", failed, len(all), first)
	}
	return changed, nil
}

func sameEvidence(a, b []metadata.SignatureEvidence) bool {
	return slices.EqualFunc(a, b, func(x, y metadata.SignatureEvidence) bool {
		return x.Policy == y.Policy && x.Hash == y.Hash && x.Verified == y.Verified
	})
}

func sameReasons(a, b []metadata.Reason) bool {
	return slices.EqualFunc(a, b, func(x, y metadata.Reason) bool {
		return x.Type == y.Type && x.Message == y.Message && x.Policy == y.Policy && x.Mode == y.Mode && x.Tag == y.Tag
	})
}
