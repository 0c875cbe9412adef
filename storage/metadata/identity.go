package metadata

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// keyUpstream prefixes, in the meta bucket, the identity recorded for each
// upstream name.
const keyUpstream = "upstream\x00"

// Reidentify records what each upstream name stands for (its URL, given by
// the caller as ids[name]) and, for every name whose identity differs from
// the one recorded, withdraws what the registry that used to answer under
// that name vouched for: the Confirmed flag of every blob and manifest link
// of its repositories, and its tag records. A name seen for the first time
// is only recorded. It returns the names whose confirmations were
// withdrawn, sorted.
//
// Links are keyed by the upstream's name, so without this an operator who
// points a name at another registry would have that registry's clients
// served what the old one confirmed.
func (db *DB) Reidentify(ctx context.Context, ids map[string]string) ([]string, error) {
	for name := range ids {
		if err := checkRepo(name); err != nil || strings.Contains(name, "/") {
			return nil, fmt.Errorf("metadata: invalid upstream name %q", name)
		}
	}
	var changed []string
	err := db.update(ctx, func(tx *bolt.Tx) error {
		changed = changed[:0]
		meta := tx.Bucket(bucketMeta)
		for name, id := range ids {
			key := []byte(keyUpstream + name)
			old := meta.Get(key)
			if old != nil && string(old) != id {
				if err := withdraw(tx, name); err != nil {
					return err
				}
				changed = append(changed, name)
			}
			if old == nil || string(old) != id {
				if err := meta.Put(key, []byte(id)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	slices.Sort(changed)
	return changed, err
}

// withdraw clears the Confirmed flag of every link under upstream name and
// deletes its tag records.
func withdraw(tx *bolt.Tx, name string) error {
	prefix := []byte(name + "/")
	for _, bucket := range [][]byte{bucketBlobLinks, bucketManifestLinks} {
		b := tx.Bucket(bucket)
		c := b.Cursor()
		var updates [][2][]byte
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			l, err := decodeLink(v)
			if err != nil || !l.Has(Confirmed) {
				continue
			}
			l.Flags &^= Confirmed
			updates = append(updates, [2][]byte{bytes.Clone(k), encodeLink(l)})
		}
		for _, u := range updates {
			if err := b.Put(u[0], u[1]); err != nil {
				return err
			}
		}
	}
	tags := tx.Bucket(bucketTags)
	var stale [][]byte
	c := tags.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		stale = append(stale, bytes.Clone(k))
	}
	for _, k := range stale {
		if err := tags.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
