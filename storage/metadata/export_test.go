package metadata

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// seedExport fills a store through its public methods with one of every
// kind of record, closes it (writing the access times) and returns its
// path.
func seedExport(t *testing.T) string {
	t.Helper()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "airlock.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	const repo = "dockerhub/library/nginx"
	m := manifest("nginx index")
	layer := digest.FromString("layer")
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 7, time.UTC)
	steps := []error{
		func() error {
			_, err := db.Reidentify(ctx, map[string]string{"dockerhub": "https://registry-1.docker.io"})
			return err
		}(),
		db.PutTag(ctx, repo, "latest", TagRecord{Digest: m.Digest, MediaType: "application/vnd.oci.image.index.v1+json", Size: 42, Resolved: t0}),
		db.PutManifest(ctx, repo, m, Link{Flags: Confirmed | Admitted, MediaType: "application/vnd.oci.image.index.v1+json"},
			BlobLink{Digest: layer, Size: 1000}),
		db.LinkBlobs(ctx, "ghcr/acme/api", BlobLink{Digest: layer, Size: 1000, Flags: Confirmed}),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("seeding step %d: %v", i, err)
		}
	}
	db.Touch(repo, m.Digest)
	db.Touch("ghcr/acme/api", layer)
	for i, st := range []State{StatePending, StateQuarantined, StateBlocked} {
		_, err := db.UpdateImage(ctx, repo, m.Digest, t0.Add(time.Duration(i)*time.Second), func(img *Image) (Change, error) {
			img.State = st
			img.Tags = []string{"latest"}
			return Change{Actor: "policy", Action: "decide", Deliveries: []Delivery{{Target: "ops", Event: Event{Type: "image." + string(st)}}}}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.UpdateImage(ctx, "ghcr/acme/api", layer, t0, func(img *Image) (Change, error) {
		img.State = StateApproved
		return Change{Actor: "policy"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	// Deliver the first two: the outbox sequence stays ahead of what is left.
	for _, seq := range []uint64{1, 2} {
		if err := db.Delivered(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func exportAll(t *testing.T, db *DB) []Record {
	t.Helper()
	var recs []Record
	if err := db.Export(t.Context(), func(r Record) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return recs
}

// TestExport checks that an export holds what the store's own methods
// answer, kind by kind, in the documented order.
func TestExport(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	db, err := OpenReadOnly(seedExport(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs := exportAll(t, db)

	var kinds []string
	for _, r := range recs {
		k := strings.TrimPrefix(fmt.Sprintf("%T", r), "metadata.")
		if len(kinds) == 0 || kinds[len(kinds)-1] != k {
			kinds = append(kinds, k)
		}
	}
	wantKinds := []string{"StoreIdentity", "UpstreamIdentity", "TagEntry", "ManifestEntry", "BlobLinkEntry", "ManifestLinkEntry",
		"AccessEntry", "LastUseEntry", "ImageEntry", "AuditEntry", "AuditHead", "DeliveryEntry", "OutboxSequence"}
	if !reflect.DeepEqual(kinds, wantKinds) {
		t.Fatalf("export kinds in order %v; want %v", kinds, wantKinds)
	}

	var (
		blobLinks, images, audits, deliveries int
		outboxSeq                             uint64
	)
	check := func(what string, got, want any, err error) {
		t.Helper()
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: exported %+v; the store answers %+v, %v", what, got, want, err)
		}
	}
	for _, r := range recs {
		switch r := r.(type) {
		case StoreIdentity:
			check("store identity", r.ID, db.ID(), nil)
		case UpstreamIdentity:
			check("upstream identity", r, UpstreamIdentity{Name: "dockerhub", ID: "https://registry-1.docker.io"}, nil)
		case TagEntry:
			rec, err := db.Tag(ctx, r.Repository, r.Tag)
			check("tag "+r.Tag, r.Record, rec, err)
		case ManifestEntry:
			rec, err := db.Manifest(ctx, r.Manifest.Digest)
			check("manifest", r.Manifest, rec, err)
		case BlobLinkEntry:
			l, err := db.BlobLink(ctx, r.Repository, r.Digest)
			check("blob link in "+r.Repository, r.Link, l, err)
			blobLinks++
		case ManifestLinkEntry:
			l, err := db.ManifestLink(ctx, r.Repository, r.Digest)
			check("manifest link", r.Link, l, err)
		case AccessEntry:
			at, err := db.Accessed(ctx, r.Repository, r.Digest)
			check("access in "+r.Repository, r.Time, at, err)
		case LastUseEntry:
			at, err := db.LastUse(ctx, r.Digest)
			check("last use", r.Time, at, err)
		case ImageEntry:
			img, err := db.Image(ctx, r.Image.Repository, r.Image.Digest)
			check("image "+r.Image.Repository, r.Image, img, err)
			images++
		case AuditEntry:
			page, err := db.Audit(ctx, r.Record.Seq-1, 1)
			check(fmt.Sprintf("audit record %d", r.Record.Seq), []AuditRecord{r.Record}, page, err)
			audits++
		case AuditHead:
			v, err := db.VerifyAudit(ctx)
			check("audit head", r, AuditHead{Seq: v.Records, Hash: v.Head}, err)
		case DeliveryEntry:
			if r.Delivery.Seq <= 2 {
				t.Errorf("delivered seq %d was exported", r.Delivery.Seq)
			}
			deliveries++
		case OutboxSequence:
			outboxSeq = r.Seq
		}
	}
	if blobLinks != 2 || images != 2 || audits != 4 || deliveries != 1 || outboxSeq != 3 {
		t.Errorf("exported %d blob links, %d images, %d audit records, %d deliveries, outbox sequence %d; want 2, 2, 4, 1, 3",
			blobLinks, images, audits, deliveries, outboxSeq)
	}
}

// TestExportStops checks the ways an export ends early: fn's error, a
// cancelled context, a record that cannot be read.
func TestExportStops(t *testing.T) {
	t.Parallel()
	errStop := errors.New("stop here")
	cases := []struct {
		name    string
		corrupt func(tx *bolt.Tx) error
		ctx     func(context.Context) context.Context
		fn      func(Record) error
		wantIs  error
		wantMsg string
	}{
		{name: "fn fails", fn: func(r Record) error {
			if _, ok := r.(ImageEntry); ok {
				return errStop
			}
			return nil
		}, wantIs: errStop, wantMsg: "stop here"},
		{name: "cancelled", ctx: func(ctx context.Context) context.Context {
			ctx, cancel := context.WithCancel(ctx)
			cancel()
			return ctx
		}, wantIs: context.Canceled, wantMsg: "context canceled"},
		{name: "corrupt image", corrupt: func(tx *bolt.Tx) error {
			return tx.Bucket(bucketImages).Put([]byte("hcl/vault\x00sha256:00"), []byte("{not json"))
		}, wantMsg: `image record "hcl/vault\x00sha256:00" is corrupt`},
		{name: "misplaced audit record", corrupt: func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketAudit)
			return b.Put(seqKey(9), b.Get(seqKey(1)))
		}, wantMsg: "audit record at key 0000000000000009 is corrupt or misplaced"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := seedExport(t)
			if c.corrupt != nil {
				bdb, err := bolt.Open(path, 0o600, nil)
				if err != nil {
					t.Fatal(err)
				}
				err = bdb.Update(c.corrupt)
				if cerr := bdb.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			db, err := OpenReadOnly(path)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			ctx := t.Context()
			if c.ctx != nil {
				ctx = c.ctx(ctx)
			}
			fn := c.fn
			if fn == nil {
				fn = func(Record) error { return nil }
			}
			err = db.Export(ctx, fn)
			if err == nil || (c.wantIs != nil && !errors.Is(err, c.wantIs)) || !strings.Contains(err.Error(), c.wantMsg) {
				t.Errorf("Export = %v; want an error saying %q", err, c.wantMsg)
			}
		})
	}
}

func TestImageCursor(t *testing.T) {
	t.Parallel()
	d := digest.FromString("x")
	repo, got, err := ParseImageCursor(ImageCursor("hcl/vault", d))
	if err != nil || repo != "hcl/vault" || got != d {
		t.Errorf("a cursor round trip = %q, %q, %v", repo, got, err)
	}
	for _, bad := range []string{"not a cursor!", "bm9wZQ"} {
		if _, _, err := ParseImageCursor(bad); err == nil || !strings.Contains(err.Error(), "is not a cursor this store returned") {
			t.Errorf("ParseImageCursor(%q) = %v; want it refused", bad, err)
		}
	}
}
