package metadata

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// This file holds what another store needs from this package to hold the
// same index: a walk over everything a DB holds (to move a single node's
// index into a shared one), and the checks and encodings [DB] applies to
// images and audit records, so that every [ImageStore] accepts, refuses
// and stores exactly what DB does.

// Record is one item of an [DB.Export]: one of StoreIdentity,
// UpstreamIdentity, TagEntry, ManifestEntry, BlobLinkEntry,
// ManifestLinkEntry, AccessEntry, LastUseEntry, ImageEntry, AuditEntry,
// AuditHead, DeliveryEntry or OutboxSequence.
type Record interface{ exported() }

// StoreIdentity is the store's identity, which prefixes event IDs: a store
// that carries it on keeps sending IDs a receiver has never seen.
type StoreIdentity struct{ ID string }

// UpstreamIdentity is what an upstream name stood for when its links were
// confirmed (see [DB.Reidentify]).
type UpstreamIdentity struct{ Name, ID string }

// TagEntry is what one tag resolved to.
type TagEntry struct {
	Repository, Tag string
	Record          TagRecord
}

// ManifestEntry is one manifest body.
type ManifestEntry struct{ Manifest ManifestRecord }

// BlobLinkEntry is what a repository knows of one blob.
type BlobLinkEntry struct {
	Repository string
	Digest     digest.Digest
	Link       Link
}

// ManifestLinkEntry is what a repository knows of one manifest.
type ManifestLinkEntry struct {
	Repository string
	Digest     digest.Digest
	Link       Link
}

// AccessEntry is the last use of a digest in one repository.
type AccessEntry struct {
	Repository string
	Digest     digest.Digest
	Time       time.Time
}

// LastUseEntry is the last use of a digest anywhere ([DB.LastUse]).
type LastUseEntry struct {
	Digest digest.Digest
	Time   time.Time
}

// ImageEntry is one image with its state.
type ImageEntry struct{ Image Image }

// AuditEntry is one audit record, as stored: its seq, Prev and Hash are
// the chain's.
type AuditEntry struct{ Record AuditRecord }

// AuditHead is the seq and hash of the last audit record, as the store
// recorded them; VerifyAudit checks the log against it.
type AuditHead struct {
	Seq  uint64
	Hash string
}

// DeliveryEntry is one delivery not yet delivered.
type DeliveryEntry struct{ Delivery Delivery }

// OutboxSequence is the last outbox seq ever handed out, delivered ones
// included: a store taking over must continue after it, or it would reuse
// event IDs receivers have seen.
type OutboxSequence struct{ Seq uint64 }

func (StoreIdentity) exported()     {}
func (UpstreamIdentity) exported()  {}
func (TagEntry) exported()          {}
func (ManifestEntry) exported()     {}
func (BlobLinkEntry) exported()     {}
func (ManifestLinkEntry) exported() {}
func (AccessEntry) exported()       {}
func (LastUseEntry) exported()      {}
func (ImageEntry) exported()        {}
func (AuditEntry) exported()        {}
func (AuditHead) exported()         {}
func (DeliveryEntry) exported()     {}
func (OutboxSequence) exported()    {}

// Export calls fn with every record the store holds, from one read
// transaction, so the records are one consistent snapshot: the store
// identity and upstream identities first, then tags, manifests, blob links,
// manifest links, access times, last uses, images, the audit log in seq
// order and its head, and the outbox in seq order with its sequence. Each
// kind comes in key order. An error from fn stops the walk and is
// returned; a record that cannot be decoded stops it with an error naming
// the record, since a copy without it would not be the same index.
//
// Access times still held in memory are not in the snapshot: export a
// stopped store ([OpenReadOnly]) or Close it first.
func (db *DB) Export(ctx context.Context, fn func(Record) error) error {
	err := db.view(ctx, func(tx *bolt.Tx) error {
		for _, step := range []func(context.Context, *bolt.Tx, func(Record) error) error{
			exportMeta, exportTags, exportManifests, exportLinks, exportAccess,
			exportLastUse, exportImages, exportAudit, exportOutbox,
		} {
			if err := step(ctx, tx, fn); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("metadata: exporting the index: %w", err)
	}
	return nil
}

// eachKey walks bucket in key order, checking ctx every few records: the
// walk may be long, and fn's work (writing elsewhere) longer.
func eachKey(ctx context.Context, tx *bolt.Tx, bucket []byte, fn func(k, v []byte) error) error {
	c := tx.Bucket(bucket).Cursor()
	n := 0
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if n++; n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if v == nil {
			continue // a nested bucket; this layout has none
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func exportMeta(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	meta := tx.Bucket(bucketMeta)
	if err := fn(StoreIdentity{ID: string(meta.Get(keyStoreID))}); err != nil {
		return err
	}
	return eachKey(ctx, tx, bucketMeta, func(k, v []byte) error {
		name, ok := strings.CutPrefix(string(k), keyUpstream)
		if !ok {
			return nil
		}
		return fn(UpstreamIdentity{Name: name, ID: string(v)})
	})
}

func exportTags(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	return eachKey(ctx, tx, bucketTags, func(k, v []byte) error {
		repo, tag, ok := strings.Cut(string(k), sep)
		var tv tagValue
		if err := json.Unmarshal(v, &tv); !ok || err != nil {
			return fmt.Errorf("tag record %q is corrupt: %v", k, err)
		}
		return fn(TagEntry{Repository: repo, Tag: tag, Record: TagRecord(tv)})
	})
}

func exportManifests(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	return eachKey(ctx, tx, bucketManifests, func(k, v []byte) error {
		rec, err := decodeManifest(digest.Digest(k), v)
		if err != nil {
			return err
		}
		return fn(ManifestEntry{Manifest: rec})
	})
}

func exportLinks(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	for _, bucket := range [][]byte{bucketBlobLinks, bucketManifestLinks} {
		err := eachKey(ctx, tx, bucket, func(k, v []byte) error {
			repo, d, ok := cutKey(k)
			l, err := decodeLink(v)
			if !ok || err != nil {
				return fmt.Errorf("%s record %q is corrupt: %v", bucket, k, err)
			}
			if bytes.Equal(bucket, bucketBlobLinks) {
				return fn(BlobLinkEntry{Repository: repo, Digest: d, Link: l})
			}
			return fn(ManifestLinkEntry{Repository: repo, Digest: d, Link: l})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func exportAccess(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	return eachKey(ctx, tx, bucketAccess, func(k, v []byte) error {
		repo, d, ok := cutKey(k)
		if !ok || len(v) != 8 {
			return fmt.Errorf("access record %q is corrupt", k)
		}
		return fn(AccessEntry{Repository: repo, Digest: d, Time: time.Unix(0, int64(binary.BigEndian.Uint64(v)))})
	})
}

func exportLastUse(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	return eachKey(ctx, tx, bucketLastUse, func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("last-use record %q is corrupt", k)
		}
		return fn(LastUseEntry{Digest: digest.Digest(k), Time: time.Unix(0, int64(binary.BigEndian.Uint64(v)))})
	})
}

func exportImages(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	return eachKey(ctx, tx, bucketImages, func(k, v []byte) error {
		var img Image
		if err := json.Unmarshal(v, &img); err != nil {
			return fmt.Errorf("image record %q is corrupt: %w", k, err)
		}
		return fn(ImageEntry{Image: img})
	})
}

func exportAudit(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	err := eachKey(ctx, tx, bucketAudit, func(k, v []byte) error {
		var r AuditRecord
		if err := json.Unmarshal(v, &r); err != nil || len(k) != 8 || binary.BigEndian.Uint64(k) != r.Seq {
			return fmt.Errorf("audit record at key %x is corrupt or misplaced (run airlock audit verify): %v", k, err)
		}
		return fn(AuditEntry{Record: r})
	})
	if err != nil {
		return err
	}
	seq, hash := auditHead(tx.Bucket(bucketMeta))
	return fn(AuditHead{Seq: seq, Hash: hash})
}

func exportOutbox(ctx context.Context, tx *bolt.Tx, fn func(Record) error) error {
	err := eachKey(ctx, tx, bucketOutbox, func(k, v []byte) error {
		var d Delivery
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("delivery at key %x is corrupt: %w", k, err)
		}
		return fn(DeliveryEntry{Delivery: d})
	})
	if err != nil {
		return err
	}
	return fn(OutboxSequence{Seq: tx.Bucket(bucketOutbox).Sequence()})
}

// CheckImageKey refuses a repository or digest no store may key an image
// by: an empty or NUL-carrying repository, a malformed digest.
func CheckImageKey(repo string, d digest.Digest) error {
	_, err := refKey(repo, d)
	return err
}

// CheckRepository refuses a repository name no store keeps anything under.
func CheckRepository(repo string) error { return checkRepo(repo) }

// CheckImage refuses what an UpdateImage fn must not leave behind: another
// name, no state or an unknown one, reasons of unknown types, a negative
// pull count.
func CheckImage(img *Image, repo string, d digest.Digest) error { return checkImage(img, repo, d) }

// CanonicalImage is img as a store keeps it: empty lists non-nil, times in
// UTC. Stores encode it with encoding/json.
func CanonicalImage(img Image) Image { return canonicalImage(img) }

// SealAudit makes r the record that follows prev at seq in the chain: its
// times in UTC, its Seq and Prev set, its Hash computed ([AuditHash]).
func SealAudit(r AuditRecord, seq uint64, prev string) AuditRecord {
	r.Seq, r.Prev = seq, prev
	r = canonicalAudit(r)
	r.Hash = AuditHash(r)
	return r
}

// ImageCursor is the ImagePage.Next that continues a listing after the
// image repo@d: the image's key, base64url-encoded, the same in every
// store, so a cursor stays valid across a move from one store to another.
func ImageCursor(repo string, d digest.Digest) string {
	return base64.RawURLEncoding.EncodeToString([]byte(repo + sep + string(d)))
}

// ParseImageCursor reads a cursor made by [ImageCursor].
func ParseImageCursor(s string) (repo string, d digest.Digest, err error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		var ok bool
		if repo, d, ok = cutKey(b); ok {
			return repo, d, nil
		}
	}
	return "", "", fmt.Errorf("metadata: %q is not a cursor this store returned: start the listing again without it", s)
}
