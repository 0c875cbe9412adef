package metadata

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/verify"
)

// store is the contract every metadata index implements. testStore runs
// against any of them, so a PostgreSQL index can reuse it.
type store interface {
	Tag(ctx context.Context, repo, tag string) (TagRecord, error)
	PutTag(ctx context.Context, repo, tag string, rec TagRecord) error
	Tags(ctx context.Context, repo string) ([]string, error)
	Manifest(ctx context.Context, d digest.Digest) (ManifestRecord, error)
	PutManifest(ctx context.Context, repo string, rec ManifestRecord, link Link, admit ...BlobLink) error
	RepoManifest(ctx context.Context, repo string, d digest.Digest) (ManifestRecord, Link, error)
	ManifestLink(ctx context.Context, repo string, d digest.Digest) (Link, error)
	LinkManifest(ctx context.Context, repo string, d digest.Digest, l Link) error
	AdmitManifest(ctx context.Context, repo string, d digest.Digest, blobs []BlobLink) error
	BlobLink(ctx context.Context, repo string, d digest.Digest) (Link, error)
	LinkBlobs(ctx context.Context, repo string, blobs ...BlobLink) error
	Touch(repo string, d digest.Digest)
	Accessed(ctx context.Context, repo string, d digest.Digest) (time.Time, error)
	LastUse(ctx context.Context, d digest.Digest) (time.Time, error)
	Close() error
}

func manifest(body string) ManifestRecord {
	return ManifestRecord{
		Digest:    digest.FromString(body),
		MediaType: "application/vnd.oci.image.manifest.v1+json",
		Body:      []byte(body),
	}
}

// testStore is the conformance suite. open returns a fresh, empty store that
// the suite closes itself.
func testStore(t *testing.T, open func(t *testing.T) store) {
	t.Run("tags round trip", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		const repo = "dockerhub/library/nginx"
		if _, err := s.Tag(ctx, repo, "latest"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Tag of unknown tag = %v, want ErrNotFound", err)
		}
		want := TagRecord{Digest: digest.FromString("m1"), MediaType: "application/vnd.oci.image.index.v1+json",
			Size: 1234, Resolved: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
		for _, tag := range []string{"latest", "1.27", "1.27-alpine", "1.25"} {
			if err := s.PutTag(ctx, repo, tag, want); err != nil {
				t.Fatal(err)
			}
		}
		// Another repository whose name is a prefix must not leak in.
		if err := s.PutTag(ctx, repo+"-extra", "zzz", want); err != nil {
			t.Fatal(err)
		}
		if err := s.PutTag(ctx, "quay/library/nginx", "other", want); err != nil {
			t.Fatal(err)
		}
		got, err := s.Tag(ctx, repo, "latest")
		if err != nil || got.Digest != want.Digest || got.MediaType != want.MediaType ||
			got.Size != want.Size || !got.Resolved.Equal(want.Resolved) {
			t.Fatalf("Tag = %+v, %v; want %+v", got, err, want)
		}
		moved := want
		moved.Digest = digest.FromString("m2")
		if err := s.PutTag(ctx, repo, "latest", moved); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Tag(ctx, repo, "latest"); got.Digest != moved.Digest {
			t.Fatalf("tag not moved: %s", got.Digest)
		}
		tags, err := s.Tags(ctx, repo)
		if wantTags := []string{"1.25", "1.27", "1.27-alpine", "latest"}; err != nil || !slices.Equal(tags, wantTags) {
			t.Fatalf("Tags = %v, %v; want %v", tags, err, wantTags)
		}
		if tags, err := s.Tags(ctx, "dockerhub/unknown"); err != nil || len(tags) != 0 {
			t.Fatalf("Tags of unknown repo = %v, %v; want none", tags, err)
		}
	})

	t.Run("manifests round trip", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		m := manifest(`{"schemaVersion":2,"layers":[]}`)
		if _, err := s.Manifest(ctx, m.Digest); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Manifest before put = %v, want ErrNotFound", err)
		}
		if _, err := s.ManifestLink(ctx, "gcr/distroless/static", m.Digest); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("ManifestLink before put = %v, want ErrNotFound", err)
		}
		if err := s.PutManifest(ctx, "gcr/distroless/static", m, Link{Flags: Confirmed, MediaType: m.MediaType}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Manifest(ctx, m.Digest)
		if err != nil || got.Digest != m.Digest || got.MediaType != m.MediaType || string(got.Body) != string(m.Body) {
			t.Fatalf("Manifest = %+v, %v", got, err)
		}
		got.Body[0] = 'X' // callers own what they get
		if again, _ := s.Manifest(ctx, m.Digest); string(again.Body) != string(m.Body) {
			t.Fatal("modifying a returned body changed the stored manifest")
		}
		rec, l, err := s.RepoManifest(ctx, "gcr/distroless/static", m.Digest)
		if err != nil || string(rec.Body) != string(m.Body) || !l.Has(Confirmed) || l.Has(Admitted) ||
			l.Size != int64(len(m.Body)) || l.MediaType != m.MediaType {
			t.Fatalf("RepoManifest = %+v, %+v, %v", rec, l, err)
		}
		// Cached, but not for this repository: the record comes back so the
		// caller can confirm it upstream, with ErrNotFound for the link.
		rec, _, err = s.RepoManifest(ctx, "gcr/distroless/base", m.Digest)
		if !errors.Is(err, storage.ErrNotFound) || rec.Digest != m.Digest {
			t.Fatalf("RepoManifest in another repository = %+v, %v; want the record and ErrNotFound", rec, err)
		}
		// A manifest link is not a blob link.
		if _, err := s.BlobLink(ctx, "gcr/distroless/static", m.Digest); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("BlobLink of a manifest = %v, want ErrNotFound", err)
		}
		empty := ManifestRecord{Digest: digest.FromString(""), Body: nil}
		if err := s.PutManifest(ctx, "gcr/x", empty, Link{Flags: Confirmed}); err != nil {
			t.Fatalf("PutManifest of empty body: %v", err)
		}
		if got, err := s.Manifest(ctx, empty.Digest); err != nil || len(got.Body) != 0 || got.MediaType != "" {
			t.Fatalf("empty manifest = %+v, %v", got, err)
		}
	})

	t.Run("a manifest admitted as it is stored", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		const repo = "quay/app"
		m := manifest(`{"schemaVersion":2,"layers":[{"digest":"y"}]}`)
		layer := digest.FromString("layer y")
		// Without Admitted on the manifest's link, nothing is admitted.
		if err := s.PutManifest(ctx, repo, m, Link{Flags: Confirmed}, BlobLink{Digest: layer, Size: 9}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.BlobLink(ctx, repo, layer); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("a blob was admitted by a manifest that was not: %v", err)
		}
		if err := s.PutManifest(ctx, repo, m, Link{Flags: Confirmed | Admitted}, BlobLink{Digest: layer, Size: 9}); err != nil {
			t.Fatal(err)
		}
		if l, err := s.BlobLink(ctx, repo, layer); err != nil || !l.Has(Admitted) || l.Has(Confirmed) || l.Size != 9 {
			t.Fatalf("blob after an admitting PutManifest = %+v, %v", l, err)
		}
		if l, _ := s.ManifestLink(ctx, repo, m.Digest); !l.Has(Admitted | Confirmed) {
			t.Fatalf("manifest link = %+v, want admitted and confirmed", l)
		}
		if err := s.PutManifest(ctx, repo, m, Link{Flags: Admitted}, BlobLink{Digest: "sha256:nope", Size: 1}); err == nil {
			t.Fatal("PutManifest admitted an invalid digest")
		}
	})

	t.Run("links say what vouched for them", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		const repo = "gcr/distroless/static"
		m := manifest(`{"schemaVersion":2,"layers":[{"digest":"x"}]}`)
		layer := digest.FromString("layer")
		if err := s.PutManifest(ctx, repo, m, Link{Flags: Confirmed}); err != nil {
			t.Fatal(err)
		}
		// Admitting records the declared sizes but confirms nothing.
		if err := s.AdmitManifest(ctx, repo, m.Digest, []BlobLink{{Digest: layer, Size: 5, Flags: Confirmed}}); err != nil {
			t.Fatal(err)
		}
		if l, err := s.BlobLink(ctx, repo, layer); err != nil || !l.Has(Admitted) || l.Has(Confirmed) || l.Size != 5 {
			t.Fatalf("layer after AdmitManifest = %+v, %v; want admitted, unconfirmed, size 5", l, err)
		}
		if l, err := s.ManifestLink(ctx, repo, m.Digest); err != nil || !l.Has(Admitted|Confirmed) {
			t.Fatalf("manifest after AdmitManifest = %+v, %v; want admitted and confirmed", l, err)
		}
		if _, err := s.BlobLink(ctx, "gcr/distroless/base", layer); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("layer linked into a repository that never referenced it: %v", err)
		}
		// Flags accumulate and a known size is kept.
		if err := s.LinkBlobs(ctx, repo, BlobLink{Digest: layer, Size: 7, Flags: Confirmed}); err != nil {
			t.Fatal(err)
		}
		if l, _ := s.BlobLink(ctx, repo, layer); !l.Has(Admitted|Confirmed) || l.Size != 5 {
			t.Fatalf("layer after confirmation = %+v; want both flags and size 5", l)
		}
		// The upstream's word on the size replaces a declaration; a later
		// declaration does not replace it.
		if err := s.LinkBlobs(ctx, repo, BlobLink{Digest: layer, Size: 7, UpstreamSize: true}); err != nil {
			t.Fatal(err)
		}
		if err := s.AdmitManifest(ctx, repo, m.Digest, []BlobLink{{Digest: layer, Size: 9}}); err != nil {
			t.Fatal(err)
		}
		if l, _ := s.BlobLink(ctx, repo, layer); !l.Has(Admitted|Confirmed) || l.Size != 7 {
			t.Fatalf("layer after the upstream's size = %+v; want both flags and size 7", l)
		}
		// A media type is per repository.
		if err := s.LinkManifest(ctx, "quay/x", m.Digest, Link{Flags: Confirmed, MediaType: "text/html"}); err != nil {
			t.Fatal(err)
		}
		if l, _ := s.ManifestLink(ctx, repo, m.Digest); l.MediaType != "" {
			t.Fatalf("another repository's media type leaked in: %+v", l)
		}
		if err := s.AdmitManifest(ctx, "gcr/x", m.Digest, []BlobLink{{Digest: "sha256:bad", Size: 1}}); err == nil {
			t.Fatal("AdmitManifest accepted an invalid blob digest")
		}
	})

	t.Run("manifest checks", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		bad := manifest(`{"a":1}`)
		bad.Body = []byte(`{"a":2}`)
		if err := s.PutManifest(ctx, "dockerhub/x", bad, Link{}); !errors.Is(err, verify.ErrDigestMismatch) {
			t.Fatalf("PutManifest with wrong digest = %v, want ErrDigestMismatch", err)
		}
		if _, err := s.Manifest(ctx, bad.Digest); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("refused manifest stored anyway: %v", err)
		}
		big := make([]byte, MaxManifestSize+1)
		huge := ManifestRecord{Digest: digest.FromBytes(big), Body: big}
		if err := s.PutManifest(ctx, "dockerhub/x", huge, Link{}); !errors.Is(err, verify.ErrTooLarge) {
			t.Fatalf("PutManifest over the limit = %v, want ErrTooLarge", err)
		}
		limit := make([]byte, MaxManifestSize)
		if err := s.PutManifest(ctx, "dockerhub/x", ManifestRecord{Digest: digest.FromBytes(limit), Body: limit}, Link{}); err != nil {
			t.Fatalf("PutManifest at the limit: %v", err)
		}
	})

	t.Run("invalid names", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		d := digest.FromString("x")
		checks := []struct {
			name string
			err  error
		}{
			{"empty repo", s.PutTag(ctx, "", "latest", TagRecord{Digest: d})},
			{"empty tag", s.PutTag(ctx, "a/b", "", TagRecord{Digest: d})},
			{"NUL in repo", s.LinkBlobs(ctx, "a\x00b", BlobLink{Digest: d, Size: 1})},
			{"bad digest in tag", s.PutTag(ctx, "a/b", "t", TagRecord{Digest: "sha256:nope"})},
			{"bad digest link", s.LinkBlobs(ctx, "a/b", BlobLink{Digest: "sha256:../../x", Size: 1})},
			{"negative size", s.LinkBlobs(ctx, "a/b", BlobLink{Digest: d, Size: -1})},
		}
		for _, c := range checks {
			if c.err == nil {
				t.Errorf("%s: accepted", c.name)
			}
		}
	})

	t.Run("blob links", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		d := digest.FromString("layer")
		if err := s.LinkBlobs(ctx, "dockerhub/library/alpine", BlobLink{Digest: d, Size: 3_000_000, Flags: Confirmed}); err != nil {
			t.Fatal(err)
		}
		if l, err := s.BlobLink(ctx, "dockerhub/library/alpine", d); err != nil || !l.Has(Confirmed) || l.Size != 3_000_000 {
			t.Fatalf("BlobLink = %+v, %v; want confirmed, 3000000 bytes", l, err)
		}
		if _, err := s.BlobLink(ctx, "dockerhub/library/busybox", d); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("blob linked into another repository: %v", err)
		}
		if _, err := s.ManifestLink(ctx, "dockerhub/library/alpine", d); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("a blob link reads as a manifest link: %v", err)
		}
	})

	t.Run("touch", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		d := digest.FromString("hot layer")
		if _, err := s.Accessed(ctx, "a/b", d); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Accessed before Touch = %v, want ErrNotFound", err)
		}
		before := time.Now()
		s.Touch("a/b", d)
		s.Touch("", d)            // ignored, not a panic
		s.Touch("a/b", "garbage") // ignored
		at, err := s.Accessed(ctx, "a/b", d)
		if err != nil || at.Before(before.Add(-time.Second)) {
			t.Fatalf("Accessed = %v, %v; want about now", at, err)
		}
	})

	t.Run("last use across repositories", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		d, other := digest.FromString("shared layer"), digest.FromString("other layer")
		if _, err := s.LastUse(ctx, d); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("LastUse before Touch = %v, want ErrNotFound", err)
		}
		s.Touch("dockerhub/library/nginx", d)
		first, err := s.LastUse(ctx, d)
		if err != nil {
			t.Fatalf("LastUse after Touch = %v", err)
		}
		time.Sleep(2 * time.Millisecond)
		s.Touch("quay/prometheus/node-exporter", d)
		s.Touch("dockerhub/library/nginx", other)
		second, err := s.LastUse(ctx, d)
		if err != nil || !second.After(first) {
			t.Fatalf("LastUse after a use in another repository = %v, %v; want later than %v", second, err, first)
		}
		if at, err := s.Accessed(ctx, "dockerhub/library/nginx", d); err != nil || !at.Equal(first) {
			t.Errorf("Accessed in the first repository = %v, %v; want its own time %v", at, err, first)
		}
		if _, err := s.LastUse(ctx, "sha256:short"); err == nil || errors.Is(err, storage.ErrNotFound) {
			t.Errorf("LastUse of an invalid digest = %v, want a validation error", err)
		}
	})

	t.Run("concurrent writers", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx := t.Context()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for w := range 16 {
			wg.Go(func() {
				repo := fmt.Sprintf("dockerhub/team%d/app", w%4)
				for i := range 20 {
					d := digest.FromString(fmt.Sprintf("%d/%d", w, i))
					m := manifest(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))
					for _, err := range []error{
						s.LinkBlobs(ctx, repo, BlobLink{Digest: d, Size: int64(i), Flags: Confirmed}),
						s.PutTag(ctx, repo, fmt.Sprintf("w%d-%d", w, i), TagRecord{Digest: d, Size: int64(i)}),
						s.PutManifest(ctx, repo, m, Link{Flags: Confirmed}),
					} {
						if err != nil {
							errs <- err
						}
					}
					s.Touch(repo, d)
					if l, err := s.BlobLink(ctx, repo, d); !l.Has(Confirmed) || err != nil {
						errs <- fmt.Errorf("link %s in %s not visible after LinkBlobs: %v", d, repo, err)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		tags, err := s.Tags(ctx, "dockerhub/team0/app")
		if err != nil || len(tags) != 4*20 {
			t.Fatalf("team0 has %d tags (%v), want 80", len(tags), err)
		}
	})

	t.Run("cancelled context", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		defer s.Close()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := s.Tag(ctx, "a/b", "t"); !errors.Is(err, context.Canceled) {
			t.Errorf("Tag with cancelled context = %v", err)
		}
		if err := s.LinkBlobs(ctx, "a/b", BlobLink{Digest: digest.FromString("x"), Size: 1}); !errors.Is(err, context.Canceled) {
			t.Errorf("LinkBlobs with cancelled context = %v", err)
		}
	})
}
