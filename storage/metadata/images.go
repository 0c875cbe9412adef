package metadata

import (
	"context"
	"time"

	"github.com/opencontainers/go-digest"
)

// Reason types: what kind of check or person put an image in its state.
const (
	ReasonSignature     = "signature"
	ReasonVulnerability = "vulnerability"
	ReasonPolicy        = "policy"
	ReasonManual        = "manual"
)

// Reason says why an image has its state. Type and Message are always set;
// the other fields carry the detail a check has (which policy, which tag,
// which key, which CVE) so that the admin API and console can show it
// without parsing the message.
type Reason struct {
	Type    string `json:"type"`
	Message string `json:"message"`
	// Policy names the policy that produced the reason.
	Policy string `json:"policy,omitempty"`
	// Mode is "audit" when the policy only records its finding: the image
	// is served anyway.
	Mode string `json:"mode,omitempty"`
	// Tag is the tag the image was pulled by when the finding is about it.
	Tag string `json:"tag,omitempty"`
	// Actor is who gave a manual reason.
	Actor string `json:"actor,omitempty"`
	// Signature detail.
	KeyID    string `json:"keyId,omitempty"`
	Identity string `json:"identity,omitempty"`
	// Vulnerability detail.
	ID        string `json:"id,omitempty"`
	Package   string `json:"package,omitempty"`
	Installed string `json:"installed,omitempty"`
	Fixed     string `json:"fixed,omitempty"`
	Severity  string `json:"severity,omitempty"`
	// Expires is the end of a release or waiver the reason describes.
	Expires *time.Time `json:"expires,omitempty"`
}

// Verdict is what the policies concluded about an image, before any admin
// override: approved, quarantined or pending, with the reasons. An image no
// policy matches is approved with no reasons.
type Verdict struct {
	State   State    `json:"state"`
	Reasons []Reason `json:"reasons,omitempty"`
	// Policies names the policies that matched.
	Policies  []string  `json:"policies,omitempty"`
	DecidedAt time.Time `json:"decidedAt"`
	// Signatures are the signature checks' results, per policy, kept so
	// that a decision made again under the same trust material reuses
	// them instead of verifying again.
	Signatures []SignatureEvidence `json:"signatures,omitempty"`
	// Waived are the vulnerability findings a waiver (a policy's allow
	// list or a VEX statement) let through, with the waiver.
	Waived []Waived `json:"waived,omitempty"`
	// Recheck, when set, is when the verdict changes by itself (the
	// first waiver to end): the gate decides the image again then.
	Recheck time.Time `json:"recheck,omitzero"`
}

// Waived is a finding a waiver let through.
type Waived struct {
	ID       string `json:"id"`
	Package  string `json:"package,omitempty"`
	Severity string `json:"severity,omitempty"`
	Policy   string `json:"policy"`
	Reason   string `json:"reason"`
	// Source is where the waiver is written: "policy" for the policy's
	// allow list, else the VEX document's path.
	Source string `json:"source"`
	// Until is the waiver's end; zero for a VEX statement, which lasts as
	// long as the document says it.
	Until time.Time `json:"until,omitzero"`
}

// Scan states.
const (
	// ScanQueued: waiting for a worker.
	ScanQueued = "queued"
	// ScanRunning: a worker is indexing and matching it.
	ScanRunning = "scanning"
	// ScanDone: Findings are the current result.
	ScanDone = "done"
	// ScanFailed: the last attempt failed (Error says why); the scanner
	// retries until its attempts run out, and an admin's rescan starts
	// over.
	ScanFailed = "failed"
)

// Scan is the vulnerability scan of one manifest's content. It depends on
// the digest only, so every repository holding the digest shares it.
type Scan struct {
	State    string    `json:"state"`
	Queued   time.Time `json:"queued,omitzero"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Attempts int       `json:"attempts,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Data identifies the vulnerability data the findings were matched
	// against; it changes when an update or import brings new data.
	Data string `json:"data,omitempty"`
	// Distribution names the operating system found ("Debian GNU/Linux
	// 12 (bookworm)"); empty when none was recognised.
	Distribution string `json:"distribution,omitempty"`
	// Packages counts the packages indexed.
	Packages int `json:"packages"`
	// Layers and Size describe the content scanned.
	Layers int   `json:"layers"`
	Size   int64 `json:"size"`
	// Note says why a done scan found nothing to look at (not a container
	// image: a Helm chart, a WASM module).
	Note     string    `json:"note,omitempty"`
	Findings []Finding `json:"findings,omitempty"`
}

// Severities, normalised, from least to most severe. Unknown is what a
// source that rates nothing (Alpine's secdb) reports.
const (
	SeverityUnknown    = "unknown"
	SeverityNegligible = "negligible"
	SeverityLow        = "low"
	SeverityMedium     = "medium"
	SeverityHigh       = "high"
	SeverityCritical   = "critical"
)

// Finding is one vulnerability affecting one installed package.
type Finding struct {
	// ID is the advisory's identifier: a CVE id where there is one, else
	// the source's (DSA-, ALPINE-, GHSA-).
	ID        string `json:"id"`
	Package   string `json:"package"`
	Installed string `json:"installed"`
	// Fixed is the first version without it; empty when no fix exists.
	Fixed string `json:"fixed,omitempty"`
	// Severity is normalised (Severity* constants); SourceSeverity is
	// what the source said.
	Severity       string `json:"severity"`
	SourceSeverity string `json:"sourceSeverity,omitempty"`
	// Link is the advisory's address.
	Link string `json:"link,omitempty"`
	// Updater names the data source (debian/updater/bookworm).
	Updater string `json:"updater,omitempty"`
	// Layer is the layer that installed the package.
	Layer digest.Digest `json:"layer,omitempty"`
}

// SignatureEvidence is what checking an image's signatures against one
// policy's trust material found.
type SignatureEvidence struct {
	Policy string `json:"policy"`
	// Hash identifies the trust material and settings the check ran with.
	Hash     string `json:"hash"`
	Verified bool   `json:"verified"`
	// Kind is how the accepted signature was made: "key", "keyless" or
	// "notation"; empty when none verified.
	Kind string `json:"kind,omitempty"`
	// KeyID names the key (a fingerprint) or certificate that verified.
	KeyID string `json:"keyId,omitempty"`
	// Identity is the keyless or Notation identity that verified.
	Identity string `json:"identity,omitempty"`
	// Message says why nothing verified, in a sentence, or what did.
	Message string `json:"message"`
	// Examined counts the signature artifacts looked at.
	Examined  int       `json:"examined"`
	CheckedAt time.Time `json:"checkedAt"`
}

// ArtifactSignature marks an Image that is a signature or attestation.
const ArtifactSignature = "signature"

// Override actions.
const (
	ActionRelease = "release"
	ActionBlock   = "block"
)

// Override is an admin's decision about one image, which wins over the
// verdict: a block always, a release until it expires.
type Override struct {
	Action string    `json:"action"` // ActionRelease or ActionBlock
	By     string    `json:"by"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
	// Expires ends a release; zero means never.
	Expires time.Time `json:"expires,omitzero"`
}

// Platform is one manifest an image index lists.
type Platform struct {
	Digest       digest.Digest `json:"digest"`
	MediaType    string        `json:"mediaType,omitempty"`
	OS           string        `json:"os,omitempty"`
	Architecture string        `json:"architecture,omitempty"`
	Variant      string        `json:"variant,omitempty"`
	// Fetched is set once a client pulled this platform's manifest.
	Fetched bool `json:"fetched,omitempty"`
}

// Image is one manifest airlock has served or refused in one repository,
// with its state. Repository is "<upstream>/<repository>".
type Image struct {
	Repository string        `json:"repository"`
	Digest     digest.Digest `json:"digest"`
	MediaType  string        `json:"mediaType,omitempty"`
	// State is the effective state: the verdict, unless an override
	// decides (see the gate).
	State   State    `json:"state"`
	Reasons []Reason `json:"reasons"`
	Verdict Verdict  `json:"verdict"`
	// Override is the admin decision in force, if any.
	Override *Override `json:"override,omitempty"`
	// Tags are the tags that last resolved to this image here.
	Tags []string `json:"tags"`
	// Platforms are the manifests an index lists; empty for a manifest.
	Platforms []Platform `json:"platforms,omitempty"`
	// Artifact is ArtifactSignature for a signature or attestation
	// artifact: policies do not apply to those (they cannot be run, and
	// verifiers in the cluster must be able to read them), and it is
	// approved on sight.
	Artifact string `json:"artifact,omitempty"`
	// Subject is the image a signature artifact signs; it is served to
	// clients only while that image is.
	Subject digest.Digest `json:"subject,omitempty"`
	// Index, on a platform manifest recorded on its own (to be scanned
	// where a policy checks vulnerabilities), is the index it was first
	// pulled through: that index's signature and pins decide for it, and
	// it is served only while an index listing it is.
	Index digest.Digest `json:"index,omitempty"`
	// Scan is the vulnerability scan of this digest, when a policy with
	// vulnerability checks covers the repository.
	Scan       *Scan     `json:"scan,omitempty"`
	FirstSeen  time.Time `json:"firstSeen"`
	UpdatedAt  time.Time `json:"updatedAt"`
	LastPulled time.Time `json:"lastPulled,omitzero"`
	Pulls      int64     `json:"pulls"`
}

// Change describes an update to an image for its audit record and alerts.
// The store writes an audit record when the image's state changes or when
// Action is set, and queues Deliveries, all in the transaction that writes
// the image.
type Change struct {
	// Actor is who changed it: "admin:<name>", "policy", "expiry", ...
	Actor string
	// Action names what was done (ActionRelease, "decide", "rescan",
	// "expire", "delete", ...).
	Action string
	// Reason is the admin's or the system's explanation, in a sentence.
	Reason string
	// Expires is a release's end, for the record.
	Expires time.Time
	// Deliveries are alerts to send once the change is committed; the
	// store assigns their Seq and fills Event.Audit with the new audit
	// record's hash.
	Deliveries []Delivery
}

// AuditRecord is one entry of the append-only, hash-chained audit log.
// Hash is the SHA-256 (hex, "sha256:" prefixed) of the record's canonical
// JSON encoding with Hash empty (see [AuditHash]); Prev is the Hash of the
// record before it ("" for the first). Seq counts from 1 without gaps.
type AuditRecord struct {
	Seq        uint64        `json:"seq"`
	Time       time.Time     `json:"time"`
	Actor      string        `json:"actor"`
	Action     string        `json:"action"`
	Repository string        `json:"repository"`
	Digest     digest.Digest `json:"digest"`
	From       State         `json:"from"`
	To         State         `json:"to"`
	Reason     string        `json:"reason,omitempty"`
	Reasons    []Reason      `json:"reasons,omitempty"`
	Expires    time.Time     `json:"expires,omitzero"`
	Prev       string        `json:"prev"`
	Hash       string        `json:"hash"`
}

// AuditCheck is the result of checking the audit chain.
type AuditCheck struct {
	// Records is how many records, from the first, chain correctly: the
	// whole log when OK, those before the break otherwise.
	Records uint64 `json:"records"`
	// Head is the hash of the last record.
	Head string `json:"head"`
	// OK is false when a record was edited, removed or inserted; Problem
	// then says which, and BrokenAt is the first seq that does not check.
	OK       bool   `json:"ok"`
	BrokenAt uint64 `json:"brokenAt,omitempty"`
	Problem  string `json:"problem,omitempty"`
}

// Event is the JSON body of an alert.
type Event struct {
	// ID is unique per event (the outbox seq, as a string, prefixed with
	// the store's identity so that two stores never collide).
	ID         string        `json:"id"`
	Type       string        `json:"type"` // image.quarantined, image.blocked, image.released, image.release_expired, scan.failed ...
	Time       time.Time     `json:"time"`
	Repository string        `json:"repository"`
	Digest     digest.Digest `json:"digest"`
	From       State         `json:"from,omitempty"`
	State      State         `json:"state"`
	Reasons    []Reason      `json:"reasons,omitempty"`
	Actor      string        `json:"actor,omitempty"`
	Reason     string        `json:"reason,omitempty"`
	Expires    time.Time     `json:"expires,omitzero"`
	Tags       []string      `json:"tags,omitempty"`
	// Audit is the hash of the audit record of the change, so a receiver
	// holds an anchor of the chain.
	Audit string `json:"audit,omitempty"`
}

// Delivery is one event for one alert target, kept in the outbox until it
// is delivered or given up.
type Delivery struct {
	Seq         uint64    `json:"seq"`
	Target      string    `json:"target"`
	Event       Event     `json:"event"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"nextAttempt"`
	LastError   string    `json:"lastError,omitempty"`
}

// ImageQuery selects images. Empty fields match everything.
type ImageQuery struct {
	State State
	// Upstream is the upstream name (the first path element).
	Upstream string
	// Repository is exact: "<upstream>/<repository>".
	Repository string
	// Limit bounds the answer; 0 means 100, more than 1000 means 1000.
	Limit int
	// After continues a listing: the Next of the previous page.
	After string
}

// ImagePage is one page of images in key order (repository, then digest).
type ImagePage struct {
	Images []Image
	// Next is set when more images follow; pass it as ImageQuery.After.
	Next string
}

// PullStat is what happened to an image since the last flush.
type PullStat struct {
	Repository string
	Digest     digest.Digest
	Pulls      int64
	Last       time.Time
	// Platforms are child manifests pulled through this image.
	Platforms []digest.Digest
}

// ImageStore keeps images' states, the audit log and the alert outbox. Every
// implementation passes metadatatest.RunImageStore unchanged.
type ImageStore interface {
	// Image returns one image, or an error wrapping storage.ErrNotFound.
	Image(ctx context.Context, repo string, d digest.Digest) (Image, error)
	// Images lists images in key order.
	Images(ctx context.Context, q ImageQuery) (ImagePage, error)
	// EachImage calls fn for every image in key order (the gate loads its
	// cache with it at start); an error from fn stops the walk.
	EachImage(ctx context.Context, fn func(Image) error) error
	// UpdateImage reads the image (a new one has Repository and Digest
	// set and a zero FirstSeen), lets fn change it, and writes it with its
	// audit record and deliveries in one transaction. fn may run more
	// than once; an error from it aborts with nothing written. now stamps
	// UpdatedAt, FirstSeen of a new image and the audit record.
	UpdateImage(ctx context.Context, repo string, d digest.Digest, now time.Time, fn func(img *Image) (Change, error)) (Image, error)
	// DeleteImage removes the image record, with an audit record of the
	// change (To is StateNone), in one transaction. Deleting an unknown
	// image is an error wrapping storage.ErrNotFound.
	DeleteImage(ctx context.Context, repo string, d digest.Digest, now time.Time, c Change) error
	// RecordPulls adds pull counts and last-pulled times and marks
	// platforms fetched; images not in the store are skipped.
	RecordPulls(ctx context.Context, stats []PullStat) error

	// Audit returns up to limit records with Seq > after, in order; limit
	// 0 means 100, more than 1000 means 1000.
	Audit(ctx context.Context, after uint64, limit int) ([]AuditRecord, error)
	// VerifyAudit checks the whole chain against the stored head.
	VerifyAudit(ctx context.Context) (AuditCheck, error)

	// DueDeliveries returns up to limit deliveries whose NextAttempt is
	// not after now, oldest first.
	DueDeliveries(ctx context.Context, now time.Time, limit int) ([]Delivery, error)
	// DueDeliveriesPerTarget is DueDeliveries with at most perTarget
	// deliveries of any one target (0: no bound), so that a receiver down
	// for long cannot fill the answer and hide the others' deliveries.
	DueDeliveriesPerTarget(ctx context.Context, now time.Time, perTarget, limit int) ([]Delivery, error)
	// Delivered removes a delivery from the outbox; an unknown seq is an
	// error wrapping storage.ErrNotFound.
	Delivered(ctx context.Context, seq uint64) error
	// RetryDelivery records a failed attempt (Attempts+1, LastError) and
	// when to try again; an unknown seq is an error wrapping
	// storage.ErrNotFound.
	RetryDelivery(ctx context.Context, seq uint64, next time.Time, lastErr string) error
}
