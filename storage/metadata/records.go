package metadata

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/verify"
)

// MaxManifestSize is the largest manifest the index holds, the limit
// registries commonly enforce for manifests.
const MaxManifestSize = 4 << 20

// TagRecord is what a tag resolved to upstream, and when.
type TagRecord struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
	Resolved  time.Time
}

// ManifestRecord is a manifest body as fetched and verified.
type ManifestRecord struct {
	Digest    digest.Digest
	MediaType string
	Body      []byte
}

type tagValue struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size"`
	Resolved  time.Time     `json:"resolved"`
}

// Tag returns what tag in repo last resolved to, or an error wrapping
// storage.ErrNotFound.
func (db *DB) Tag(ctx context.Context, repo, tag string) (TagRecord, error) {
	key, err := tagKey(repo, tag)
	if err != nil {
		return TagRecord{}, err
	}
	var v tagValue
	err = db.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTags).Get(key)
		if b == nil {
			return fmt.Errorf("tag %s:%s: %w", repo, tag, storage.ErrNotFound)
		}
		return json.Unmarshal(b, &v)
	})
	if err != nil {
		return TagRecord{}, err
	}
	return TagRecord(v), nil
}

// PutTag records what tag in repo resolved to.
func (db *DB) PutTag(ctx context.Context, repo, tag string, rec TagRecord) error {
	key, err := tagKey(repo, tag)
	if err != nil {
		return err
	}
	if err := verify.Check(rec.Digest); err != nil {
		return fmt.Errorf("metadata: tag %s:%s: %w", repo, tag, err)
	}
	val, err := json.Marshal(tagValue(rec))
	if err != nil {
		return err
	}
	return db.batch(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTags).Put(key, val)
	})
}

// Tags returns the tags of repo known locally, sorted; it is what airlock
// can list when the upstream is unreachable. An unknown repository has no
// tags and no error.
func (db *DB) Tags(ctx context.Context, repo string) ([]string, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	prefix := repoPrefix(repo)
	tags := []string{}
	err := db.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketTags).Cursor()
		// Keys are sorted bytewise, so the tags come out sorted too.
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			tags = append(tags, string(k[len(prefix):]))
		}
		return nil
	})
	return tags, err
}

// Manifest returns the manifest with digest d, or an error wrapping
// storage.ErrNotFound.
func (db *DB) Manifest(ctx context.Context, d digest.Digest) (ManifestRecord, error) {
	if err := verify.Check(d); err != nil {
		return ManifestRecord{}, fmt.Errorf("metadata: %w", err)
	}
	var rec ManifestRecord
	err := db.view(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketManifests).Get([]byte(d))
		if b == nil {
			return fmt.Errorf("manifest %s: %w", d, storage.ErrNotFound)
		}
		var err error
		rec, err = decodeManifest(d, b)
		return err
	})
	return rec, err
}

// PutManifest stores a manifest and merges link into repo's link of it.
// When link carries Admitted, the blobs given are admitted as AdmitManifest
// would, in the same transaction: one commit on the cold path of a pull
// where the manifest is admitted as it is fetched. The body must hash to
// rec.Digest.
func (db *DB) PutManifest(ctx context.Context, repo string, rec ManifestRecord, link Link, admit ...BlobLink) error {
	key, err := refKey(repo, rec.Digest)
	if err != nil {
		return err
	}
	if len(rec.Body) > MaxManifestSize {
		return fmt.Errorf("metadata: manifest %s is %d bytes, over the %d byte limit: %w",
			rec.Digest, len(rec.Body), MaxManifestSize, verify.ErrTooLarge)
	}
	if err := verify.Bytes(rec.Digest, rec.Body); err != nil {
		return fmt.Errorf("metadata: manifest for %s: %w", repo, err)
	}
	if !link.Has(Admitted) {
		admit = nil
	}
	keys, err := admissionKeys(repo, admit)
	if err != nil {
		return err
	}
	if link.Size == 0 {
		link.Size = int64(len(rec.Body))
	}
	val := encodeManifest(rec)
	return db.update(ctx, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketManifests).Put([]byte(rec.Digest), val); err != nil {
			return err
		}
		if err := admitBlobs(tx, keys, admit); err != nil {
			return err
		}
		return mergeLink(tx.Bucket(bucketManifestLinks), key, link, false)
	})
}

// Manifest values are a version byte, the media type with a uvarint length,
// then the body. Bodies are up to 4 MiB, so a JSON or base64 wrapping would
// cost real time on every manifest hit.
const manifestEncoding = 1

func encodeManifest(rec ManifestRecord) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(rec.MediaType)+len(rec.Body))
	b = append(b, manifestEncoding)
	b = binary.AppendUvarint(b, uint64(len(rec.MediaType)))
	b = append(b, rec.MediaType...)
	return append(b, rec.Body...)
}

// decodeManifest copies out of b, which belongs to the transaction.
func decodeManifest(d digest.Digest, b []byte) (ManifestRecord, error) {
	if len(b) == 0 || b[0] != manifestEncoding {
		return ManifestRecord{}, fmt.Errorf("manifest %s: unknown record encoding", d)
	}
	n, w := binary.Uvarint(b[1:])
	if w <= 0 || n > uint64(len(b)-1-w) {
		return ManifestRecord{}, errors.New("manifest " + d.String() + ": corrupt record")
	}
	rest := b[1+w:]
	return ManifestRecord{
		Digest:    d,
		MediaType: string(rest[:n]),
		Body:      bytes.Clone(rest[n:]),
	}, nil
}
