// Package gate decides whether an image may be served: it joins the
// policies' verdicts, the admins' overrides and the clock into each image's
// state, keeps every state in memory so that a warm pull pays a map lookup
// for its decision, and records every change, with its audit record and
// alerts, in the image store.
//
// The gate implements proxy.Gate and proxy.Governor. A repository is
// governed when a policy matches it or an admin blocked an image in it:
// there a blob is readable only through a servable manifest that lists it,
// and when a manifest stops being servable (blocked, quarantined again, a
// release expired) the gate asks the content index to withdraw its blobs.
package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Errors of the admin operations, besides storage.ErrNotFound.
var (
	// ErrConflict means the operation does not apply to the image's
	// current state (releasing an approved or blocked image).
	ErrConflict = errors.New("conflict")
	// ErrInvalid means the request itself is wrong (no reason, an expiry
	// in the past).
	ErrInvalid = errors.New("invalid request")
)

// Store is what the gate keeps its states in (*metadata.DB implements it).
type Store interface {
	// Image reads one image, or returns an error wrapping
	// storage.ErrNotFound (Refresh reads another replica's change).
	Image(ctx context.Context, repo string, d digest.Digest) (metadata.Image, error)
	EachImage(ctx context.Context, fn func(metadata.Image) error) error
	UpdateImage(ctx context.Context, repo string, d digest.Digest, now time.Time, fn func(img *metadata.Image) (metadata.Change, error)) (metadata.Image, error)
	DeleteImage(ctx context.Context, repo string, d digest.Digest, now time.Time, c metadata.Change) error
	RecordPulls(ctx context.Context, stats []metadata.PullStat) error
}

// Content is the cached content behind the states (the proxy implements
// it).
type Content interface {
	// Withdraw makes the blobs of repo@d unreadable in repo, except those
	// that a manifest there for which servable is true still lists.
	Withdraw(ctx context.Context, repo string, d digest.Digest, servable func(digest.Digest) bool) error
	// Remove deletes the cached manifest repo@d and what only it used.
	Remove(ctx context.Context, repo string, d digest.Digest) error
}

// Router turns an event into the deliveries of the alerts that want it.
type Router interface {
	Route(ev metadata.Event) []metadata.Delivery
}

// Options configure a Gate.
type Options struct {
	Store    Store
	Content  Content
	Policies *policy.Set
	// Alerts routes events to webhooks; nil sends none.
	Alerts Router
	// Verify runs signature checks; required when a policy has one.
	Verify Verify
	// Scanner scans images for vulnerabilities; required when a policy
	// checks them. Its results must reach ScanResult.
	Scanner Scanner
	// Delivered is called after a change queued deliveries (to wake the
	// deliverer); nil does nothing.
	Delivered func()
	// KnownRepository reports whether repo ("<upstream>/<repository>") is
	// one airlock serves; a block on any other is refused. nil accepts all.
	KnownRepository func(repo string) bool
	// PendingRetry is the Retry-After of a pull refused while checks run;
	// 0 means 15s.
	PendingRetry time.Duration
	// VerifyTimeout bounds one image's signature check under one policy;
	// past it the check has not decided, and the pull is asked to retry
	// (what it read is cached by then). 0 means 1 minute.
	VerifyTimeout time.Duration
	Now           func() time.Time
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Gate is the admission gate. It is safe for concurrent use.
type Gate struct {
	store     Store
	content   Content
	known     func(string) bool
	delivered func()
	retry     time.Duration
	verifyFor time.Duration
	now       func() time.Time
	log       *slog.Logger
	metrics   *metrics
	verify    Verify
	flights   singleflight.Group
	scanner   Scanner
	// scannerWarned is when a failure to queue a scan was last logged
	// at Warn.
	scannerWarned atomic.Pointer[time.Time]

	policies atomic.Pointer[policy.Set]
	alerts   atomic.Pointer[routerBox]
	// undecided is set when SetPolicies could not record some image's
	// new state; Run retries.
	undecided atomic.Bool

	// write serialises state changes: they are rare, and one at a time
	// keeps memory and store in the same order.
	write sync.Mutex

	mu sync.RWMutex
	// images holds every image by key (repository "@" digest).
	images map[string]*metadata.Image
	// tags maps "repository:tag" to the digest it last resolved to.
	tags map[string]digest.Digest
	// parents maps a platform manifest's key to the keys of the indexes
	// that list it.
	parents map[string][]string
	// overrides counts the images with a block per repository: a block
	// governs its repository even where no policy does.
	blocks map[string]int
	// artifacts counts the signature artifacts per repository: where there
	// are some, an image refused on first sight has its blobs withdrawn,
	// in case an artifact admitted them.
	artifacts map[string]int
	// scans holds the latest scan of every digest scanned: a scan is of
	// the content, so a digest met in another repository is decided with
	// it at once.
	scans map[digest.Digest]*metadata.Scan
	// syncedTo is where syncScans goes on through the settled scans; only
	// Run touches it.
	syncedTo digest.Digest
	// kicking holds the digests whose scan kickScan is asking for;
	// kicks counts its goroutines, which stop once stopped is set.
	kicking sync.Map
	kickMu  sync.Mutex
	kicks   sync.WaitGroup
	stopped bool

	statsMu sync.Mutex
	stats   map[string]*pullCount

	// plainWrites and background track the records of images approved on
	// sight being written (plain.go).
	plainWrites chan struct{}
	background  sync.WaitGroup
	// syncing keeps background.Add off a Wait in progress (Flush runs
	// Sync while pulls go on).
	syncing sync.Mutex

	// unrecorded holds the keys of images approved on sight whose record
	// failed to land: their next pull records them (plain.go). Under mu.
	unrecorded map[string]bool
	// landing counts, by key, the records of images approved on sight
	// being written: a refresh that finds no record must keep those
	// images too. Under mu.
	landing map[string]int

	// recent remembers the last refusals for the console (recent.go).
	recent recentDenials
}

// pullCount is an image's pulls since the last flush, with the platforms
// pulled through it as a set: an index may list tens of thousands.
type pullCount struct {
	stat      metadata.PullStat
	platforms map[digest.Digest]bool
}

type routerBox struct{ r Router }

// New loads every image's state from the store.
func New(ctx context.Context, o Options) (*Gate, error) {
	if o.Store == nil || o.Content == nil {
		return nil, errors.New("gate: Store and Content are required")
	}
	g := &Gate{
		store: o.Store, content: o.Content, known: o.KnownRepository, delivered: o.Delivered, verify: o.Verify, scanner: o.Scanner,
		scans: map[digest.Digest]*metadata.Scan{},
		retry: o.PendingRetry, verifyFor: o.VerifyTimeout, now: o.Now, log: o.Logger,
		images: map[string]*metadata.Image{}, tags: map[string]digest.Digest{}, unrecorded: map[string]bool{}, landing: map[string]int{},
		plainWrites: make(chan struct{}, maxPlainWrites),
		parents:     map[string][]string{}, blocks: map[string]int{}, artifacts: map[string]int{}, stats: map[string]*pullCount{},
	}
	if g.retry <= 0 {
		g.retry = 15 * time.Second
	}
	if g.verifyFor <= 0 {
		g.verifyFor = time.Minute
	}
	if g.now == nil {
		g.now = time.Now
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	if g.delivered == nil {
		g.delivered = func() {}
	}
	g.policies.Store(o.Policies)
	g.alerts.Store(&routerBox{o.Alerts})
	err := o.Store.EachImage(ctx, func(img metadata.Image) error {
		g.remember(&img)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gate: loading image states: %w", err)
	}
	// The states were decided under the policies of the last run; the
	// files they name (pins, keys, trusted roots) may have changed since.
	// Run decides every image again under these, as a reload would.
	g.undecided.Store(len(g.images) > 0)
	g.metrics = newMetrics(g, o.Registerer)
	return g, nil
}

// The index media types, as the proxy reports them in Subject.MediaType.
const (
	mediaOCIIndex   = "application/vnd.oci.image.index.v1+json"
	mediaDockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

func imageKey(repo string, d digest.Digest) string { return repo + "@" + d.String() }

// remember puts img in memory, replacing what was there, with its tags,
// platforms and block. Callers hold mu for writing (New runs alone).
func (g *Gate) remember(img *metadata.Image) {
	key := imageKey(img.Repository, img.Digest)
	if old := g.images[key]; old != nil {
		g.forgetLocked(old)
	}
	g.images[key] = img
	delete(g.unrecorded, key)
	for _, t := range img.Tags {
		g.tags[img.Repository+":"+t] = img.Digest
	}
	for _, p := range img.Platforms {
		ck := imageKey(img.Repository, p.Digest)
		if !slices.Contains(g.parents[ck], key) {
			g.parents[ck] = append(g.parents[ck], key)
		}
	}
	if img.Override != nil && img.Override.Action == metadata.ActionBlock {
		g.blocks[img.Repository]++
	}
	if img.Artifact != "" {
		g.artifacts[img.Repository]++
	}
	if img.Scan != nil && newerScan(img.Scan, g.scans[img.Digest]) {
		g.scans[img.Digest] = img.Scan
	}
}

// forgetLocked undoes remember for img, except its tags, which the image
// now holding them replaced.
func (g *Gate) forgetLocked(img *metadata.Image) {
	key := imageKey(img.Repository, img.Digest)
	delete(g.images, key)
	delete(g.unrecorded, key)
	for _, t := range img.Tags {
		if g.tags[img.Repository+":"+t] == img.Digest {
			delete(g.tags, img.Repository+":"+t)
		}
	}
	for _, p := range img.Platforms {
		ck := imageKey(img.Repository, p.Digest)
		ps := slices.DeleteFunc(g.parents[ck], func(k string) bool { return k == key })
		if len(ps) == 0 {
			delete(g.parents, ck)
		} else {
			g.parents[ck] = ps
		}
	}
	if img.Override != nil && img.Override.Action == metadata.ActionBlock {
		if g.blocks[img.Repository]--; g.blocks[img.Repository] <= 0 {
			delete(g.blocks, img.Repository)
		}
	}
	if img.Artifact != "" {
		if g.artifacts[img.Repository]--; g.artifacts[img.Repository] <= 0 {
			delete(g.artifacts, img.Repository)
		}
	}
}

// Governs reports whether the gate holds blobs in upstream/repo to its
// manifests: a policy matches the repository, or an image there is blocked.
func (g *Gate) Governs(upstream, repo string) bool {
	name := upstream + "/" + repo
	if g.policies.Load().Governs(name) {
		return true
	}
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.blocks[name] > 0
}

// admit decides whether the manifest s may be served. A known image costs
// a map lookup; the first sight of an image, or of a tag resolving to it,
// is decided and recorded before the answer.
func (g *Gate) admit(ctx context.Context, s proxy.Subject) (proxy.Decision, error) {
	repo := s.Upstream + "/" + s.Repository
	key := imageKey(repo, s.Digest)
	now := g.now()
	g.mu.RLock()
	img := g.images[key]
	// An image recorded before its content was seen (blocked ahead of
	// its first pull) is observed once, to record what an index lists.
	known := img != nil && img.MediaType != "" && (s.Tag == "" || g.tags[repo+":"+s.Tag] == s.Digest) && !g.unrecorded[key]
	var parent *metadata.Image
	if s.Tag == "" && (img == nil || !servable(img, now)) && !blocked(img) {
		// A platform is served with its index, unless an admin blocked
		// the platform itself: a block wins over any approval.
		parent = g.parentLocked(key, now)
	}
	g.mu.RUnlock()

	// Where a policy checks vulnerabilities, a platform is scanned and
	// decided on its own; its index's signature and pins still decide for
	// it (it gets its own record, which names the index).
	var via digest.Digest
	scanned := parent != nil && servable(parent, now) && !isIndex(s.MediaType) && (img == nil || img.Index == "") &&
		g.policies.Load().Scans(repo)
	if scanned && !proxy.Internal(ctx) {
		via = parent.Digest
	}
	switch {
	case scanned && proxy.Internal(ctx) && signatureArtifact(s.MediaType, s.Body) == "":
		// airlock reads, while verifying, what an upstream's referrers
		// list names: a platform named there is not served with its index
		// (that would admit its layers before any scan), nor scanned.
		g.metrics.decision("deny")
		return proxy.Decision{Message: fmt.Sprintf("%s@%s is not a signature artifact; airlock reads only signatures while verifying", repo, s.Digest)}, nil
	case parent != nil && servable(parent, now) && via == "" && (img == nil || img.Index == ""):
		// A platform of a servable index is served with it.
		g.count(parent, s.Digest, s.Head, now)
		g.metrics.decision("allow")
		return proxy.Decision{Allow: true}, nil
	case via != "":
	case known:
		return g.answerFor(ctx, img, s, now), nil
	case img == nil && parent != nil:
		// A platform of an index that may not be served.
		g.metrics.decision("deny")
		return proxy.Decision{Message: fmt.Sprintf("%s@%s is a platform of %s@%s, which is %s: %s. %s",
			repo, s.Digest, repo, parent.Digest, stateOf(parent, now), summary(parent), showHint(parent))}, nil
	}
	if proxy.Internal(ctx) && signatureArtifact(s.MediaType, s.Body) == "" {
		// airlock reads signatures for itself; an image it meets while
		// doing so is not judged (and verified) in turn.
		g.metrics.decision("deny")
		return proxy.Decision{Message: fmt.Sprintf("%s@%s is not a signature artifact; airlock reads only signatures while verifying", repo, s.Digest)}, nil
	}
	if !g.Governs(s.Upstream, s.Repository) {
		if img := g.observePlain(repo, s, now); img != nil {
			return g.answerFor(ctx, img, s, now), nil
		}
	}
	img, err := g.observe(ctx, repo, s, now, "", via)
	if isUnchecked(err) {
		g.metrics.decision("pending")
		g.log.LogAttrs(ctx, slog.LevelWarn, "signatures could not be checked; the pull is asked to retry",
			slog.String("image", key), slog.String("error", err.Error()))
		return proxy.Decision{RetryAfter: g.retry,
			Message: fmt.Sprintf("%s@%s: its signatures could not be checked yet (%v); retry shortly", repo, s.Digest, err)}, nil
	}
	if err != nil {
		if !g.policies.Load().Governs(repo) {
			// Where no policy applies airlock serves as a plain cache
			// would; a store that cannot record the state (a full volume)
			// must not stop that.
			g.log.LogAttrs(ctx, slog.LevelWarn, "recording an image's state failed; serving it, as no policy applies",
				slog.String("image", key), slog.String("error", err.Error()))
			return proxy.Decision{Allow: true}, nil
		}
		return proxy.Decision{}, err
	}
	return g.answerFor(ctx, img, s, now), nil
}

// answerFor is answer, except that a client gets a signature artifact only
// while the image it signs is servable here: otherwise an upstream could
// hand out any small blobs as "signatures" of nothing airlock serves.
// airlock itself reads them while verifying that image. The image signed
// is the one the request names (the manifest's subject, else its
// "sha256-<hex>.sig" tag), else the one recorded: one signature manifest
// may sit under the tags of several images (a copied signature), and
// each tag answers for its own image.
func (g *Gate) answerFor(ctx context.Context, img *metadata.Image, s proxy.Subject, now time.Time) proxy.Decision {
	if img.Index != "" {
		return g.answerPlatform(img, s.Head, now)
	}
	if img.Artifact == "" || proxy.Internal(ctx) {
		return g.answer(img, s.Head, now)
	}
	signed := artifactSubject(s.Body, s.Tag)
	if signed == "" || signed == s.Digest {
		signed = img.Subject
	}
	g.mu.RLock()
	signed, ok := g.signedLocked(img.Repository, signed)
	subject := g.images[imageKey(img.Repository, signed)]
	parent := g.parentLocked(imageKey(img.Repository, signed), now)
	g.mu.RUnlock()
	switch {
	case !ok:
		g.metrics.decision("deny")
		return proxy.Decision{Message: fmt.Sprintf("%s@%s is a signature of a chain of more than %d signatures; airlock serves signatures of images only",
			img.Repository, img.Digest, maxArtifactChain)}
	case subject != nil && servable(subject, now) && !blocked(subject), parent != nil && servable(parent, now) && !blocked(subject):
		return g.answer(img, s.Head, now)
	case subject == nil && parent == nil:
		g.metrics.decision("deny")
		return proxy.Decision{Message: fmt.Sprintf("%s@%s is a signature of %s@%s, which airlock has not served; pull that image first",
			img.Repository, img.Digest, img.Repository, signed)}
	}
	st := metadata.StateBlocked
	if subject != nil {
		st = stateOf(subject, now)
	} else {
		st = stateOf(parent, now)
	}
	g.metrics.decision("deny")
	return proxy.Decision{Message: fmt.Sprintf("%s@%s is a signature of %s@%s, which is %s", img.Repository, img.Digest,
		img.Repository, signed, st)}
}

// answerPlatform answers for a platform with a record of its own: it is
// served while it is servable itself and an index listing it is.
func (g *Gate) answerPlatform(img *metadata.Image, head bool, now time.Time) proxy.Decision {
	if !servable(img, now) {
		return g.answer(img, head, now)
	}
	g.mu.RLock()
	parent := g.parentLocked(imageKey(img.Repository, img.Digest), now)
	g.mu.RUnlock()
	if parent == nil || !servable(parent, now) {
		g.metrics.decision("deny")
		if parent == nil {
			return proxy.Decision{Message: fmt.Sprintf("%s@%s is a platform of %s@%s, which airlock no longer holds; pull the image by its tag",
				img.Repository, img.Digest, img.Repository, img.Index)}
		}
		return proxy.Decision{Message: fmt.Sprintf("%s@%s is a platform of %s@%s, which is %s: %s. %s",
			img.Repository, img.Digest, img.Repository, parent.Digest, stateOf(parent, now), summary(parent), showHint(parent))}
	}
	return g.answer(img, head, now)
}

// maxArtifactChain bounds how many signature artifacts deep a signature
// of a signature may sit (a Notation signature of a cosign signature).
const maxArtifactChain = 4

// signedLocked follows the subjects of artifacts in repo from d to the
// image they end at: an artifact is approved on sight, so a signature of
// a signature is served only while the image at the end of the chain is.
// It reports false for a chain longer than maxArtifactChain (or a loop,
// which tags naming each other make). Callers hold mu.
func (g *Gate) signedLocked(repo string, d digest.Digest) (digest.Digest, bool) {
	for range maxArtifactChain {
		s := g.images[imageKey(repo, d)]
		if s == nil || s.Artifact == "" {
			return d, true
		}
		d = s.Subject
	}
	return "", false
}

// parentLocked returns a servable index that lists key, else any index
// that does, else nil. Callers hold mu.
func (g *Gate) parentLocked(key string, now time.Time) *metadata.Image {
	var any *metadata.Image
	for _, pk := range g.parents[key] {
		if p := g.images[pk]; p != nil {
			if servable(p, now) {
				return p
			}
			any = p
		}
	}
	return any
}

// answer turns img's state into the proxy's decision.
func (g *Gate) answer(img *metadata.Image, head bool, now time.Time) proxy.Decision {
	st := stateOf(img, now)
	switch st {
	case metadata.StateApproved, metadata.StateReleased:
		g.count(img, "", head, now)
		g.metrics.decision("allow")
		return proxy.Decision{Allow: true}
	case metadata.StatePending:
		g.metrics.decision("pending")
		msg := g.scanPending(img, now)
		if img.Scan == nil && msg != "" {
			g.kickScan(img.Repository, img.Digest)
		}
		if msg == "" {
			msg = fmt.Sprintf("%s@%s is being checked: %s; retry shortly", img.Repository, img.Digest, summary(img))
		}
		return proxy.Decision{RetryAfter: g.retry, Reasons: reasonTexts(img.Reasons), Message: msg}
	}
	g.metrics.decision("deny")
	msg := fmt.Sprintf("%s@%s is %s: %s. %s", img.Repository, img.Digest, st, summary(img), showHint(img))
	if st == metadata.StateQuarantined && img.State == metadata.StateReleased {
		msg = fmt.Sprintf("%s@%s is quarantined: its release ended at %s (%s). %s", img.Repository, img.Digest,
			img.Override.Expires.UTC().Format(time.RFC3339), summary(img), showHint(img))
	}
	return proxy.Decision{Message: msg, Reasons: reasonTexts(img.Reasons)}
}

// stateOf is img's state at now: a release that has ended no longer
// counts, even before the expiry is recorded.
func stateOf(img *metadata.Image, now time.Time) metadata.State {
	if img.State == metadata.StateReleased && policy.Expired(img.Override, now) {
		st, _ := policy.Effective(img.Verdict, nil, now)
		return st
	}
	return img.State
}

func servable(img *metadata.Image, now time.Time) bool { return policy.Servable(stateOf(img, now)) }

// blocked reports whether an admin blocked img (nil: not seen).
func blocked(img *metadata.Image) bool {
	return img != nil && img.Override != nil && img.Override.Action == metadata.ActionBlock
}

// summary is img's reasons in one line.
func summary(img *metadata.Image) string {
	var parts []string
	for _, r := range img.Reasons {
		if r.Mode == config.ModeAudit {
			continue
		}
		parts = append(parts, r.Message)
	}
	if len(parts) == 0 {
		return "no reason was recorded"
	}
	if len(parts) > 3 {
		parts = append(parts[:3], fmt.Sprintf("and %d more", len(parts)-3))
	}
	return joinSentences(parts)
}

func joinSentences(parts []string) string {
	out := ""
	for i, p := range parts {
		if i > 0 {
			out += "; "
		}
		out += p
	}
	return out
}

func showHint(img *metadata.Image) string {
	return fmt.Sprintf("An admin can see why with: airlock images show %s@%s", img.Repository, img.Digest)
}

func reasonTexts(rs []metadata.Reason) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Message)
	}
	return out
}

// count notes a pull of img (through its platform p, when set) for the
// next flush; a HEAD is a lookup, not a pull.
func (g *Gate) count(img *metadata.Image, p digest.Digest, head bool, now time.Time) {
	if head {
		return
	}
	key := imageKey(img.Repository, img.Digest)
	g.statsMu.Lock()
	c := g.stats[key]
	if c == nil {
		c = &pullCount{stat: metadata.PullStat{Repository: img.Repository, Digest: img.Digest}}
		g.stats[key] = c
	}
	if p == "" {
		c.stat.Pulls++
	} else if !c.platforms[p] {
		if c.platforms == nil {
			c.platforms = map[digest.Digest]bool{}
		}
		c.platforms[p] = true
		c.stat.Platforms = append(c.stat.Platforms, p)
	}
	c.stat.Last = now
	g.statsMu.Unlock()
}

// platforms lists the manifests an index names. Only an index lists
// platforms: any other manifest that carries a "manifests" field (an
// upstream's invention) lists none, or releasing it would let through
// whatever it names.
func platforms(mediaType string, body []byte) []metadata.Platform {
	if mediaType != mediaOCIIndex && mediaType != mediaDockerList {
		return nil
	}
	var idx struct {
		Manifests []struct {
			Digest    digest.Digest `json:"digest"`
			MediaType string        `json:"mediaType"`
			Platform  *struct {
				OS           string `json:"os"`
				Architecture string `json:"architecture"`
				Variant      string `json:"variant"`
			} `json:"platform"`
		} `json:"manifests"`
	}
	if json.Unmarshal(body, &idx) != nil {
		return nil
	}
	var out []metadata.Platform
	for _, m := range idx.Manifests {
		if m.Digest.Validate() != nil {
			continue
		}
		p := metadata.Platform{Digest: m.Digest, MediaType: m.MediaType}
		if m.Platform != nil {
			p.OS, p.Architecture, p.Variant = m.Platform.OS, m.Platform.Architecture, m.Platform.Variant
		}
		out = append(out, p)
	}
	return out
}
