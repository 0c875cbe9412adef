package metadata

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/storage"
)

// A link records that a repository ("<upstream>/<repository>") may know a
// digest. Blobs and manifests are stored once for every repository and
// upstream, so the link is what keeps one upstream's content from being
// served through another: a digest is served through a repository only when
// that repository's own upstream vouched for it (Confirmed) and, for blobs of
// a repository under policy, only when an admitted manifest there lists it
// (Admitted). Blob links and manifest links live in separate buckets, so a
// manifest that lists another manifest's digest as a layer links a blob,
// never a manifest.

// LinkFlags say what a link has been vouched for.
type LinkFlags uint8

const (
	// Confirmed means the repository's own upstream served the digest to
	// airlock for this repository, or answered a HEAD for it with the
	// repository's credentials. A manifest's list of digests is never a
	// confirmation.
	Confirmed LinkFlags = 1 << iota
	// Admitted means, for a blob, that a manifest of this repository that
	// lists it passed the gate (or was served where no policy applies);
	// for a manifest, that its references have been recorded as admitted.
	Admitted
)

// Link is what a repository knows of one digest.
type Link struct {
	Flags LinkFlags
	// Size is a blob's size (declared by the manifest that admitted it or
	// measured when it was fetched) or a manifest body's size; 0 if unknown.
	Size int64
	// MediaType is, for a manifest, the media type served for it in this
	// repository: the one its body declares, else what the repository's own
	// upstream sent.
	MediaType string
}

// Has reports whether every flag in f is set.
func (l Link) Has(f LinkFlags) bool { return l.Flags&f == f }

// BlobLink asks for flags and a size on the link of one blob.
type BlobLink struct {
	Digest digest.Digest
	Size   int64
	Flags  LinkFlags
	// UpstreamSize says Size is the repository's upstream's word (the length
	// it announced, or the bytes it sent): it replaces a size a manifest
	// declared, which is kept only until the upstream says otherwise. A
	// wrong declaration would otherwise bound, and fail, every later fill
	// of the blob in the repository.
	UpstreamSize bool
}

// Link values are a version byte, the flags, the size as a uvarint, then
// the media type.
const linkEncoding = 1

func encodeLink(l Link) []byte {
	b := make([]byte, 0, 2+binary.MaxVarintLen64+len(l.MediaType))
	b = append(b, linkEncoding, byte(l.Flags))
	b = binary.AppendUvarint(b, uint64(l.Size))
	return append(b, l.MediaType...)
}

func decodeLink(b []byte) (Link, error) {
	if len(b) < 3 || b[0] != linkEncoding {
		return Link{}, errors.New("unknown link encoding")
	}
	n, w := binary.Uvarint(b[2:])
	if w <= 0 || n > 1<<62 {
		return Link{}, errors.New("corrupt link record")
	}
	return Link{Flags: LinkFlags(b[1]), Size: int64(n), MediaType: string(b[2+w:])}, nil
}

// mergeLink adds what next says to what the bucket holds under key: flags
// accumulate, a size is kept once known (unless replaceSize brings a
// different one), a media type is replaced.
func mergeLink(b *bolt.Bucket, key []byte, next Link, replaceSize bool) error {
	if old := b.Get(key); old != nil {
		prev, err := decodeLink(old)
		if err == nil {
			keepSize := next.Size == 0 || (prev.Size != 0 && !replaceSize) || next.Size == prev.Size
			if prev.Flags|next.Flags == prev.Flags && keepSize &&
				(next.MediaType == "" || next.MediaType == prev.MediaType) {
				return nil // nothing new: no write
			}
			next.Flags |= prev.Flags
			if keepSize {
				next.Size = prev.Size
			}
			if next.MediaType == "" {
				next.MediaType = prev.MediaType
			}
		}
	}
	return b.Put(key, encodeLink(next))
}

func getLink(tx *bolt.Tx, bucket, key []byte, what string) (Link, error) {
	v := tx.Bucket(bucket).Get(key)
	if v == nil {
		return Link{}, fmt.Errorf("%s link %s: %w", what, key, storage.ErrNotFound)
	}
	l, err := decodeLink(v)
	if err != nil {
		return Link{}, fmt.Errorf("%s link: %w", what, err)
	}
	return l, nil
}

// BlobLink returns what repo knows of blob d, or an error wrapping
// storage.ErrNotFound.
func (db *DB) BlobLink(ctx context.Context, repo string, d digest.Digest) (Link, error) {
	key, err := refKey(repo, d)
	if err != nil {
		return Link{}, err
	}
	var l Link
	err = db.view(ctx, func(tx *bolt.Tx) error {
		l, err = getLink(tx, bucketBlobLinks, key, "blob")
		return err
	})
	return l, err
}

// ManifestLink returns what repo knows of manifest d, or an error wrapping
// storage.ErrNotFound.
func (db *DB) ManifestLink(ctx context.Context, repo string, d digest.Digest) (Link, error) {
	key, err := refKey(repo, d)
	if err != nil {
		return Link{}, err
	}
	var l Link
	err = db.view(ctx, func(tx *bolt.Tx) error {
		l, err = getLink(tx, bucketManifestLinks, key, "manifest")
		return err
	})
	return l, err
}

// RepoManifest returns manifest d and repo's link to it in one read. The
// error wraps storage.ErrNotFound when either is missing; the record is
// returned when only the link is.
func (db *DB) RepoManifest(ctx context.Context, repo string, d digest.Digest) (ManifestRecord, Link, error) {
	key, err := refKey(repo, d)
	if err != nil {
		return ManifestRecord{}, Link{}, err
	}
	var (
		rec ManifestRecord
		l   Link
	)
	err = db.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketManifests).Get([]byte(d))
		if b == nil {
			return fmt.Errorf("manifest %s: %w", d, storage.ErrNotFound)
		}
		if rec, err = decodeManifest(d, b); err != nil {
			return err
		}
		l, err = getLink(tx, bucketManifestLinks, key, "manifest")
		return err
	})
	return rec, l, err
}

// LinkBlobs adds flags and sizes to repo's links of the given blobs, in one
// transaction. Flags only accumulate; a size, once known, is kept unless
// the new one is the upstream's word (BlobLink.UpstreamSize).
func (db *DB) LinkBlobs(ctx context.Context, repo string, blobs ...BlobLink) error {
	keys := make([][]byte, len(blobs))
	for i, b := range blobs {
		k, err := refKey(repo, b.Digest)
		if err != nil {
			return err
		}
		if b.Size < 0 {
			return fmt.Errorf("metadata: link of %s in %s: negative size %d", b.Digest, repo, b.Size)
		}
		keys[i] = k
	}
	if len(blobs) == 0 {
		return nil
	}
	return db.batch(ctx, func(tx *bolt.Tx) error {
		links := tx.Bucket(bucketBlobLinks)
		for i, b := range blobs {
			if err := mergeLink(links, keys[i], Link{Flags: b.Flags, Size: b.Size}, b.UpstreamSize); err != nil {
				return err
			}
		}
		return nil
	})
}

// LinkManifest adds l's flags (and media type, when set) to repo's link of
// manifest d.
func (db *DB) LinkManifest(ctx context.Context, repo string, d digest.Digest, l Link) error {
	key, err := refKey(repo, d)
	if err != nil {
		return err
	}
	return db.batch(ctx, func(tx *bolt.Tx) error {
		return mergeLink(tx.Bucket(bucketManifestLinks), key, l, false)
	})
}

// AdmitManifest records that manifest d passed the gate in repo: each blob
// it lists gets the Admitted flag (with its declared size) and the manifest
// link records that this was done, so it happens once per repository.
func (db *DB) AdmitManifest(ctx context.Context, repo string, d digest.Digest, blobs []BlobLink) error {
	mkey, err := refKey(repo, d)
	if err != nil {
		return err
	}
	keys, err := admissionKeys(repo, blobs)
	if err != nil {
		return err
	}
	return db.batch(ctx, func(tx *bolt.Tx) error {
		if err := admitBlobs(tx, keys, blobs); err != nil {
			return err
		}
		return mergeLink(tx.Bucket(bucketManifestLinks), mkey, Link{Flags: Admitted}, false)
	})
}

// admissionKeys checks the blobs an admitted manifest lists and returns
// their link keys in repo.
func admissionKeys(repo string, blobs []BlobLink) ([][]byte, error) {
	keys := make([][]byte, len(blobs))
	for i, b := range blobs {
		var err error
		if keys[i], err = refKey(repo, b.Digest); err != nil {
			return nil, err
		}
		if b.Size < 0 {
			return nil, fmt.Errorf("metadata: link of %s in %s: negative size %d", b.Digest, repo, b.Size)
		}
	}
	return keys, nil
}

// admitBlobs gives each blob link the Admitted flag and its declared size.
// Admission confirms nothing, and a declaration never replaces a size
// already known.
func admitBlobs(tx *bolt.Tx, keys [][]byte, blobs []BlobLink) error {
	links := tx.Bucket(bucketBlobLinks)
	for i, b := range blobs {
		if err := mergeLink(links, keys[i], Link{Flags: Admitted | (b.Flags &^ Confirmed), Size: b.Size}, false); err != nil {
			return err
		}
	}
	return nil
}

// migrateLinks moves schema 1's single links bucket, which did not say what
// it linked nor whether the upstream vouched for it, into the blob and
// manifest link buckets with no flags: every link is confirmed again with
// the repository's upstream on its next use. Blob links lose their size too:
// schema 1 took it from any manifest that listed the blob, refused and
// hostile ones included, and a link's size bounds fills and is kept once
// known, so a wrong one would fail every later fill of the blob there. It
// is learnt again from an admitted manifest or the upstream.
func migrateLinks(tx *bolt.Tx) error {
	old := tx.Bucket(bucketLegacyLinks)
	if old == nil {
		return nil
	}
	manifests := tx.Bucket(bucketManifests)
	blobLinks, manifestLinks := tx.Bucket(bucketBlobLinks), tx.Bucket(bucketManifestLinks)
	err := old.ForEach(func(k, v []byte) error {
		_, d, ok := cutKey(k)
		if !ok {
			return nil
		}
		if manifests.Get([]byte(d)) == nil {
			return blobLinks.Put(bytesClone(k), encodeLink(Link{}))
		}
		size, w := binary.Uvarint(v)
		if w <= 0 || size > MaxManifestSize {
			size = 0
		}
		return manifestLinks.Put(bytesClone(k), encodeLink(Link{Size: int64(size)}))
	})
	if err != nil {
		return err
	}
	return tx.DeleteBucket(bucketLegacyLinks)
}

func bytesClone(b []byte) []byte { return append([]byte(nil), b...) }
