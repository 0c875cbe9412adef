package metadata

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// auditedStore returns a store whose log holds n records, each
// quarantining or releasing an image with a reason.
func auditedStore(t *testing.T, n int) *DB {
	t.Helper()
	db := openTemp(t)
	t.Cleanup(func() { db.Close() })
	at := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		state := StateQuarantined
		if i%2 == 1 {
			state = StateReleased
		}
		_, err := db.UpdateImage(t.Context(), "vendor/app", digest.FromString("app"), at.Add(time.Duration(i)*time.Second), func(img *Image) (Change, error) {
			img.State = state
			img.Reasons = []Reason{{Type: ReasonPolicy, Message: fmt.Sprintf("finding %d", i), Policy: "pins"}}
			return Change{Actor: "admin:alice", Action: "decide"}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return db
}

// rawAudit changes the stored log directly, as someone with the file would.
func rawAudit(t *testing.T, db *DB, fn func(audit, meta *bolt.Bucket) error) {
	t.Helper()
	if err := db.bolt.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket(bucketAudit), tx.Bucket(bucketMeta)) }); err != nil {
		t.Fatal(err)
	}
}

func rewrite(t *testing.T, audit *bolt.Bucket, seq uint64, edit func(*AuditRecord), rehash bool) {
	t.Helper()
	var r AuditRecord
	if err := json.Unmarshal(audit.Get(seqKey(seq)), &r); err != nil {
		t.Fatal(err)
	}
	edit(&r)
	if rehash {
		r.Hash = AuditHash(r)
	}
	b, _ := json.Marshal(r)
	if err := audit.Put(seqKey(seq), b); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyAuditDetectsTampering edits the bolt file the way an intruder
// with access to it would, and checks that VerifyAudit names the damage.
func TestVerifyAuditDetectsTampering(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		tamper   func(t *testing.T, audit, meta *bolt.Bucket) error
		brokenAt uint64
		problem  string
	}{
		{"a byte of a reason changed", func(t *testing.T, audit, _ *bolt.Bucket) error {
			v := bytes.Clone(audit.Get(seqKey(4)))
			i := bytes.Index(v, []byte("finding 3"))
			if i < 0 {
				t.Fatalf("record 4 does not hold its reason: %s", v)
			}
			v[i+len("finding ")] = '7'
			return audit.Put(seqKey(4), v)
		}, 4, "record 4 was edited: its hash does not match its content"},
		{"a record rewritten with its hash recomputed", func(t *testing.T, audit, _ *bolt.Bucket) error {
			rewrite(t, audit, 3, func(r *AuditRecord) { r.Actor = "admin:mallory" }, true)
			return nil
		}, 4, "record 4 does not follow record 3"},
		{"a middle record deleted", func(t *testing.T, audit, _ *bolt.Bucket) error {
			return audit.Delete(seqKey(3))
		}, 3, "record 3 is missing: it was deleted"},
		{"two middle records deleted", func(t *testing.T, audit, _ *bolt.Bucket) error {
			audit.Delete(seqKey(2))
			return audit.Delete(seqKey(3))
		}, 2, "records 2 to 3 are missing"},
		{"the last record deleted, the head left", func(t *testing.T, audit, _ *bolt.Bucket) error {
			return audit.Delete(seqKey(6))
		}, 6, "the log ends at record 5 but its head is record 6"},
		{"the first record deleted", func(t *testing.T, audit, _ *bolt.Bucket) error {
			return audit.Delete(seqKey(1))
		}, 1, "record 1 is missing"},
		{"the last record replaced, hashes recomputed", func(t *testing.T, audit, _ *bolt.Bucket) error {
			rewrite(t, audit, 6, func(r *AuditRecord) { r.To = StateApproved }, true)
			return nil
		}, 6, "record 6 is not the head the store recorded"},
		{"a record moved to another key", func(t *testing.T, audit, _ *bolt.Bucket) error {
			v := bytes.Clone(audit.Get(seqKey(2)))
			audit.Delete(seqKey(2))
			return audit.Put(seqKey(99), v)
		}, 2, "record 2 is missing"},
		{"a record made unreadable", func(t *testing.T, audit, _ *bolt.Bucket) error {
			return audit.Put(seqKey(5), []byte("{not json"))
		}, 5, "record 5 cannot be read"},
		{"a record added after the head", func(t *testing.T, audit, _ *bolt.Bucket) error {
			var r AuditRecord
			json.Unmarshal(audit.Get(seqKey(6)), &r)
			r.Seq, r.Prev, r.Action = 7, r.Hash, "forged"
			r.Hash = AuditHash(r)
			b, _ := json.Marshal(r)
			return audit.Put(seqKey(7), b)
		}, 7, "the log holds 7 records but its head is record 6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			db := auditedStore(t, 6)
			if check, err := db.VerifyAudit(t.Context()); err != nil || !check.OK || check.Records != 6 {
				t.Fatalf("VerifyAudit before tampering = %+v, %v", check, err)
			}
			rawAudit(t, db, func(audit, meta *bolt.Bucket) error { return tt.tamper(t, audit, meta) })
			check, err := db.VerifyAudit(t.Context())
			if err != nil {
				t.Fatalf("VerifyAudit: %v; want a failed check, not an error", err)
			}
			if check.OK || check.BrokenAt != tt.brokenAt || !strings.Contains(check.Problem, tt.problem) {
				t.Errorf("VerifyAudit = %+v; want broken at %d with %q", check, tt.brokenAt, tt.problem)
			}
		})
	}
}

// TestAuditAppendsAfterTamperedTail shows that a record deleted from the
// tail is never silently replaced: the next change takes the head's next
// seq, and the gap stays visible.
func TestAuditAppendsAfterTamperedTail(t *testing.T) {
	t.Parallel()
	db := auditedStore(t, 3)
	rawAudit(t, db, func(audit, _ *bolt.Bucket) error { return audit.Delete(seqKey(3)) })
	_, err := db.UpdateImage(t.Context(), "vendor/app", digest.FromString("app"), time.Now(), func(img *Image) (Change, error) {
		img.State = StateBlocked
		return Change{Actor: "admin:bob", Action: ActionBlock}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	check, err := db.VerifyAudit(t.Context())
	if err != nil || check.OK || check.BrokenAt != 3 {
		t.Fatalf("VerifyAudit = %+v, %v; want record 3 reported missing", check, err)
	}
}

// TestEachImageCrossesChunks walks more images than one read transaction
// takes.
func TestEachImageCrossesChunks(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	defer db.Close()
	const n = 2*eachImageChunk + 7
	err := db.bolt.Update(func(tx *bolt.Tx) error {
		for i := range n {
			repo := fmt.Sprintf("dockerhub/r%04d", i)
			d := digest.FromString(repo)
			key, _ := refKey(repo, d)
			if _, err := putImage(tx, key, Image{Repository: repo, Digest: d, State: StateApproved}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	seen, prev := 0, ""
	err = db.EachImage(t.Context(), func(img Image) error {
		if img.Repository <= prev {
			return fmt.Errorf("%s after %s: out of order or repeated", img.Repository, prev)
		}
		prev = img.Repository
		seen++
		return nil
	})
	if err != nil || seen != n {
		t.Fatalf("EachImage saw %d images (%v), want %d", seen, err, n)
	}
}

// TestAuditChainHoldsTextThatIsNotUTF8: a reason or tag quoting a hostile
// upstream may carry bytes that are not UTF-8, which JSON writes as U+FFFD.
// The record is hashed as it reads back, so the untouched log verifies.
func TestAuditChainHoldsTextThatIsNotUTF8(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	t.Cleanup(func() { db.Close() })
	_, err := db.UpdateImage(t.Context(), "vendor/app", digest.FromString("app"), time.Now(), func(img *Image) (Change, error) {
		img.State = StateQuarantined
		img.Reasons = []Reason{{Type: ReasonPolicy, Message: "tag \xff\xfe is refused", Policy: "pins"}}
		return Change{Actor: "admin:\xc3", Action: "decide", Reason: "bad \x80 byte"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	check, err := db.VerifyAudit(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !check.OK || check.Records != 1 {
		t.Fatalf("VerifyAudit of an untouched log = %+v, want OK over 1 record", check)
	}
}
