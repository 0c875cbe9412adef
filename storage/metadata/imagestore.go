package metadata

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/storage"
)

var _ ImageStore = (*DB)(nil)

// maxImagePage bounds one Images answer.
const maxImagePage = 1000

// eachImageChunk is how many images EachImage reads per transaction: fn
// runs outside it, because a read transaction held open for the whole walk
// would keep bbolt from growing its file meanwhile.
const eachImageChunk = 512

// Image returns one image, or an error wrapping storage.ErrNotFound.
func (db *DB) Image(ctx context.Context, repo string, d digest.Digest) (Image, error) {
	key, err := refKey(repo, d)
	if err != nil {
		return Image{}, err
	}
	var img Image
	err = db.view(ctx, func(tx *bolt.Tx) error {
		var ok bool
		img, ok, err = getImage(tx, key)
		if err == nil && !ok {
			err = fmt.Errorf("image %s@%s: %w", repo, d, storage.ErrNotFound)
		}
		return err
	})
	return img, err
}

func getImage(tx *bolt.Tx, key []byte) (Image, bool, error) {
	v := tx.Bucket(bucketImages).Get(key)
	if v == nil {
		return Image{}, false, nil
	}
	var img Image
	if err := json.Unmarshal(v, &img); err != nil {
		return Image{}, false, fmt.Errorf("image record %q is corrupt: %w", key, err)
	}
	return img, true, nil
}

// putImage writes img under key and returns it as stored, so that callers
// see exactly what a later read returns.
func putImage(tx *bolt.Tx, key []byte, img Image) (Image, error) {
	img = canonicalImage(img)
	val, err := json.Marshal(img)
	if err != nil {
		return Image{}, fmt.Errorf("encoding image %s@%s: %w", img.Repository, img.Digest, err)
	}
	if err := tx.Bucket(bucketImages).Put(key, val); err != nil {
		return Image{}, err
	}
	var stored Image
	if err := json.Unmarshal(val, &stored); err != nil {
		return Image{}, err
	}
	return stored, nil
}

// canonicalImage gives lists that are empty a non-nil value, so that the
// JSON of an image always has arrays where a client expects them, and puts
// times in UTC.
func canonicalImage(img Image) Image {
	if img.Reasons == nil {
		img.Reasons = []Reason{}
	}
	if img.Tags == nil {
		img.Tags = []string{}
	}
	img.Reasons = canonicalReasons(img.Reasons)
	img.Verdict.Reasons = canonicalReasons(img.Verdict.Reasons)
	img.FirstSeen, img.UpdatedAt = img.FirstSeen.UTC(), img.UpdatedAt.UTC()
	img.LastPulled = utcUnlessZero(img.LastPulled)
	img.Verdict.DecidedAt = utcUnlessZero(img.Verdict.DecidedAt)
	if img.Override != nil {
		o := *img.Override
		o.At, o.Expires = utcUnlessZero(o.At), utcUnlessZero(o.Expires)
		img.Override = &o
	}
	return img
}

// utcUnlessZero puts t in UTC but leaves the zero time the zero value, so
// that comparing with time.Time{} keeps working.
func utcUnlessZero(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// checkImage refuses what fn must not leave behind.
func checkImage(img *Image, repo string, d digest.Digest) error {
	if img.Repository != repo || img.Digest != d {
		return fmt.Errorf("metadata: update of %s@%s changed the image's name to %s@%s", repo, d, img.Repository, img.Digest)
	}
	if img.State == StateNone || !img.State.Valid() {
		return fmt.Errorf("metadata: image %s@%s: state %q is not one of approved, pending, quarantined, blocked, released", repo, d, img.State)
	}
	if img.Verdict.State != StateNone && !img.Verdict.State.Valid() {
		return fmt.Errorf("metadata: image %s@%s: verdict state %q is unknown", repo, d, img.Verdict.State)
	}
	for _, rs := range [][]Reason{img.Reasons, img.Verdict.Reasons} {
		for _, r := range rs {
			switch r.Type {
			case ReasonSignature, ReasonVulnerability, ReasonPolicy, ReasonManual:
			default:
				return fmt.Errorf("metadata: image %s@%s: reason type %q is not one of signature, vulnerability, policy, manual", repo, d, r.Type)
			}
		}
	}
	if img.Pulls < 0 {
		return fmt.Errorf("metadata: image %s@%s: negative pull count %d", repo, d, img.Pulls)
	}
	return nil
}

// UpdateImage reads the image, lets fn change it, and writes it with its
// audit record and deliveries in one write transaction: the image, the
// chain and the outbox never disagree, even across a crash. Write
// transactions are serial, so audit seqs follow commit order strictly.
//
// fn runs once per attempt on a fresh copy of the stored image (a new one
// has Repository and Digest set and a zero FirstSeen); an error from it
// aborts with nothing written. After fn the image must have a known state
// other than StateNone and reasons of the four known types, and keep its
// repository and digest.
func (db *DB) UpdateImage(ctx context.Context, repo string, d digest.Digest, now time.Time, fn func(img *Image) (Change, error)) (Image, error) {
	key, err := refKey(repo, d)
	if err != nil {
		return Image{}, err
	}
	var out Image
	err = db.update(ctx, func(tx *bolt.Tx) error {
		img, found, err := getImage(tx, key)
		if err != nil {
			return err
		}
		if !found {
			img = Image{Repository: repo, Digest: d}
		}
		from := img.State
		change, err := fn(&img)
		if err != nil {
			return err
		}
		if err := checkImage(&img, repo, d); err != nil {
			return err
		}
		img.UpdatedAt = now
		if !found || img.FirstSeen.IsZero() {
			img.FirstSeen = now
		}
		if out, err = putImage(tx, key, img); err != nil {
			return err
		}
		var hash string
		if img.State != from || change.Action != "" {
			rec, err := appendAudit(tx, AuditRecord{
				Time: now, Actor: change.Actor, Action: change.Action,
				Repository: repo, Digest: d, From: from, To: img.State,
				Reason: change.Reason, Reasons: img.Reasons, Expires: change.Expires,
			})
			if err != nil {
				return err
			}
			hash = rec.Hash
		}
		return db.enqueue(tx, now, hash, change.Deliveries)
	})
	if err != nil {
		return Image{}, fmt.Errorf("updating image %s@%s: %w", repo, d, err)
	}
	return out, nil
}

// DeleteImage removes the image record with an audit record of the change
// (To is StateNone) and queues c.Deliveries, in one transaction. The
// record's Action is c.Action, "delete" when empty.
func (db *DB) DeleteImage(ctx context.Context, repo string, d digest.Digest, now time.Time, c Change) error {
	key, err := refKey(repo, d)
	if err != nil {
		return err
	}
	if c.Action == "" {
		c.Action = "delete"
	}
	err = db.update(ctx, func(tx *bolt.Tx) error {
		img, found, err := getImage(tx, key)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("image %s@%s: %w", repo, d, storage.ErrNotFound)
		}
		if err := tx.Bucket(bucketImages).Delete(key); err != nil {
			return err
		}
		rec, err := appendAudit(tx, AuditRecord{
			Time: now, Actor: c.Actor, Action: c.Action,
			Repository: repo, Digest: d, From: img.State, To: StateNone,
			Reason: c.Reason, Reasons: img.Reasons, Expires: c.Expires,
		})
		if err != nil {
			return err
		}
		return db.enqueue(tx, now, rec.Hash, c.Deliveries)
	})
	if err != nil {
		return fmt.Errorf("deleting image %s@%s: %w", repo, d, err)
	}
	return nil
}

// Images lists the images q selects, in key order (repository, then
// digest). Next, when set, is an opaque cursor: the last key returned,
// base64url-encoded.
func (db *DB) Images(ctx context.Context, q ImageQuery) (ImagePage, error) {
	if !q.State.Valid() {
		return ImagePage{}, fmt.Errorf("metadata: unknown state %q: want approved, pending, quarantined, blocked or released", q.State)
	}
	if q.Repository != "" {
		if err := checkRepo(q.Repository); err != nil {
			return ImagePage{}, err
		}
	}
	var after []byte
	if q.After != "" {
		var err error
		if after, err = base64.RawURLEncoding.DecodeString(q.After); err != nil || !bytes.Contains(after, []byte(sep)) {
			return ImagePage{}, fmt.Errorf("metadata: %q is not a cursor this store returned: start the listing again without it", q.After)
		}
	}
	limit := pageLimit(q.Limit, maxImagePage)
	page := ImagePage{Images: []Image{}}
	prefix := imagePrefix(q)
	err := db.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketImages).Cursor()
		k, v := c.Seek(prefix)
		if after != nil && bytes.Compare(after, prefix) >= 0 {
			k, v = c.Seek(after)
			if bytes.Equal(k, after) {
				k, v = c.Next()
			}
		}
		var last []byte
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var img Image
			if err := json.Unmarshal(v, &img); err != nil {
				return fmt.Errorf("image record %q is corrupt: %w", k, err)
			}
			if q.State != StateNone && img.State != q.State {
				continue
			}
			if len(page.Images) == limit {
				// One more matches: the page is full and another follows.
				page.Next = base64.RawURLEncoding.EncodeToString(last)
				return nil
			}
			page.Images = append(page.Images, img)
			last = bytes.Clone(k)
		}
		return nil
	})
	if err != nil {
		return ImagePage{}, fmt.Errorf("metadata: listing images: %w", err)
	}
	return page, nil
}

// imagePrefix is the key prefix q's repository or upstream selects. An
// upstream name has no "/", so "<upstream>/" selects exactly its
// repositories; a repository and an upstream that disagree select nothing.
func imagePrefix(q ImageQuery) []byte {
	switch {
	case q.Repository != "" && q.Upstream != "" && !strings.HasPrefix(q.Repository, q.Upstream+"/"):
		return []byte(sep + "nothing")
	case q.Repository != "":
		return repoPrefix(q.Repository)
	case q.Upstream != "":
		return []byte(q.Upstream + "/")
	}
	return nil
}

// EachImage calls fn for every image in key order. The walk reads a chunk
// of images per transaction, so an image written during the walk may or
// may not be seen, but none is seen twice.
func (db *DB) EachImage(ctx context.Context, fn func(Image) error) error {
	var after []byte
	for {
		var chunk []Image
		err := db.view(ctx, func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketImages).Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(chunk) < eachImageChunk; k, v = c.Next() {
				var img Image
				if err := json.Unmarshal(v, &img); err != nil {
					return fmt.Errorf("image record %q is corrupt: %w", k, err)
				}
				chunk = append(chunk, img)
				after = bytes.Clone(k)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("metadata: walking images: %w", err)
		}
		for _, img := range chunk {
			if err := fn(img); err != nil {
				return err
			}
		}
		if len(chunk) < eachImageChunk {
			return nil
		}
	}
}

// RecordPulls adds pull counts, keeps the latest pull time and marks
// platforms fetched, for the whole batch in one transaction. Images not in
// the store are skipped: the gate records an image before it serves it, so
// one missing was deleted since the pull.
func (db *DB) RecordPulls(ctx context.Context, stats []PullStat) error {
	keys := make([][]byte, len(stats))
	for i, s := range stats {
		var err error
		if keys[i], err = refKey(s.Repository, s.Digest); err != nil {
			return err
		}
		if s.Pulls < 0 {
			return fmt.Errorf("metadata: pulls of %s@%s: negative count %d", s.Repository, s.Digest, s.Pulls)
		}
	}
	if len(stats) == 0 {
		return nil
	}
	err := db.update(ctx, func(tx *bolt.Tx) error {
		for i, s := range stats {
			img, found, err := getImage(tx, keys[i])
			if err != nil {
				return err
			}
			if !found {
				continue
			}
			img.Pulls += s.Pulls
			if s.Last.After(img.LastPulled) {
				img.LastPulled = s.Last
			}
			if len(s.Platforms) > 0 {
				// A set: an index may list tens of thousands, and this
				// runs inside the write transaction.
				pulled := make(map[digest.Digest]bool, len(s.Platforms))
				for _, p := range s.Platforms {
					pulled[p] = true
				}
				for j := range img.Platforms {
					if pulled[img.Platforms[j].Digest] {
						img.Platforms[j].Fetched = true
					}
				}
			}
			if _, err := putImage(tx, keys[i], img); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("metadata: recording pulls of %d images: %w", len(stats), err)
	}
	return nil
}
