package metadata

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// ManifestLinks returns every manifest linked in repo with its link. An
// unknown repository has none and no error.
func (db *DB) ManifestLinks(ctx context.Context, repo string) (map[digest.Digest]Link, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	prefix := repoPrefix(repo)
	links := map[digest.Digest]Link{}
	err := db.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketManifestLinks).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			l, err := decodeLink(v)
			if err != nil {
				return fmt.Errorf("manifest link %q: %w", k, err)
			}
			links[digest.Digest(k[len(prefix):])] = l
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: manifests of %s: %w", repo, err)
	}
	return links, nil
}

// contentKeys checks d and blobs and returns their link keys in repo.
func contentKeys(repo string, d digest.Digest, blobs []digest.Digest) ([]byte, [][]byte, error) {
	mkey, err := refKey(repo, d)
	if err != nil {
		return nil, nil, err
	}
	keys := make([][]byte, len(blobs))
	for i, b := range blobs {
		if keys[i], err = refKey(repo, b); err != nil {
			return nil, nil, err
		}
	}
	return mkey, keys, nil
}

// WithdrawManifest takes back what admitting manifest d in repo gave: the
// Admitted flag of its manifest link and of repo's links of blobs, which
// the caller lists because no manifest still servable in repo references
// them. It runs in one transaction, so a pull never sees the manifest
// withdrawn but its blobs still admitted. Missing links are ignored; other
// flags and sizes are kept, so the content is served again as soon as a
// manifest that lists it is admitted.
func (db *DB) WithdrawManifest(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) error {
	mkey, keys, err := contentKeys(repo, d, blobs)
	if err != nil {
		return err
	}
	err = db.update(ctx, func(tx *bolt.Tx) error {
		if err := clearAdmitted(tx.Bucket(bucketManifestLinks), mkey); err != nil {
			return err
		}
		links := tx.Bucket(bucketBlobLinks)
		for _, k := range keys {
			if err := clearAdmitted(links, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("metadata: withdrawing %s@%s: %w", repo, d, err)
	}
	return nil
}

func clearAdmitted(b *bolt.Bucket, key []byte) error {
	v := b.Get(key)
	if v == nil {
		return nil
	}
	l, err := decodeLink(v)
	if err != nil {
		return fmt.Errorf("link %q: %w", key, err)
	}
	if !l.Has(Admitted) {
		return nil
	}
	l.Flags &^= Admitted
	return b.Put(key, encodeLink(l))
}

// UnlinkImage removes manifest d from repo, in one transaction: its
// manifest link, repo's links of the listed blobs (which the caller found
// no other manifest of repo references), the tags of repo that resolve to
// d, and the access times of all of them in repo. The manifest body goes
// too when no repository links it any more. It returns the blobs of the
// list that no repository links any more: the caller deletes them from the
// blob store. The image record and its audit are DeleteImage's; an index's
// child manifests are unlinked by calls of their own.
//
// Finding what nothing links any more walks every link (there is no
// reverse index), which is acceptable for an admin's delete; it is not
// for a pull. A pull that links one of the orphans after this returns
// finds the blob gone from the blob store and fetches it again.
func (db *DB) UnlinkImage(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) ([]digest.Digest, error) {
	mkey, keys, err := contentKeys(repo, d, blobs)
	if err != nil {
		return nil, err
	}
	var orphans []digest.Digest
	err = db.update(ctx, func(tx *bolt.Tx) error {
		orphans = nil
		access, blobLinks := tx.Bucket(bucketAccess), tx.Bucket(bucketBlobLinks)
		for _, k := range keys {
			if err := blobLinks.Delete(k); err != nil {
				return err
			}
			if err := access.Delete(k); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketManifestLinks).Delete(mkey); err != nil {
			return err
		}
		if err := access.Delete(mkey); err != nil {
			return err
		}
		if err := deleteTagsOf(tx.Bucket(bucketTags), repo, d); err != nil {
			return err
		}
		if !linkedAnywhere(tx.Bucket(bucketManifestLinks), map[digest.Digest]bool{d: false})[d] {
			if err := tx.Bucket(bucketManifests).Delete([]byte(d)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketLastUse).Delete([]byte(d)); err != nil {
				return err
			}
		}
		want := make(map[digest.Digest]bool, len(blobs))
		for _, b := range blobs {
			want[b] = false
		}
		linked := linkedAnywhere(blobLinks, want)
		for _, b := range blobs {
			if linked[b] {
				continue
			}
			orphans = append(orphans, b)
			linked[b] = true // once, even if listed twice
			// The blob is about to leave the store; Reconcile writes its
			// last use again if the caller fails to delete it.
			if err := tx.Bucket(bucketLastUse).Delete([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("metadata: unlinking %s@%s: %w", repo, d, err)
	}
	return orphans, nil
}

// linkedAnywhere sets want[d] for every digest of want that some key
// "repo\x00d" of links holds.
func linkedAnywhere(links *bolt.Bucket, want map[digest.Digest]bool) map[digest.Digest]bool {
	if len(want) == 0 {
		return want
	}
	c := links.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		i := bytes.LastIndexByte(k, sep[0])
		if i < 0 {
			continue
		}
		d := digest.Digest(k[i+1:])
		if _, ok := want[d]; ok {
			want[d] = true
		}
	}
	return want
}

// deleteTagsOf removes repo's tags that resolve to d.
func deleteTagsOf(tags *bolt.Bucket, repo string, d digest.Digest) error {
	prefix := repoPrefix(repo)
	var stale [][]byte
	c := tags.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var t tagValue
		if json.Unmarshal(v, &t) == nil && t.Digest == d {
			stale = append(stale, bytes.Clone(k))
		}
	}
	// Deleting while a cursor walks the bucket skips keys; delete after.
	for _, k := range stale {
		if err := tags.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
