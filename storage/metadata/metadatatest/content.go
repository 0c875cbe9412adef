package metadatatest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify"
)

// ContentIndex is the content half of a metadata store: tags, manifests,
// the links that say what a repository may serve, access times, and the
// upkeep the gateway runs at start-up. It is what the proxy (its Metadata
// and content index), the evictor and the serve command ask of a store;
// *metadata.DB and the PostgreSQL store implement it.
type ContentIndex interface {
	Tag(ctx context.Context, repo, tag string) (metadata.TagRecord, error)
	PutTag(ctx context.Context, repo, tag string, rec metadata.TagRecord) error
	Tags(ctx context.Context, repo string) ([]string, error)
	Manifest(ctx context.Context, d digest.Digest) (metadata.ManifestRecord, error)
	RepoManifest(ctx context.Context, repo string, d digest.Digest) (metadata.ManifestRecord, metadata.Link, error)
	PutManifest(ctx context.Context, repo string, rec metadata.ManifestRecord, link metadata.Link, admit ...metadata.BlobLink) error
	ManifestLink(ctx context.Context, repo string, d digest.Digest) (metadata.Link, error)
	LinkManifest(ctx context.Context, repo string, d digest.Digest, l metadata.Link) error
	AdmitManifest(ctx context.Context, repo string, d digest.Digest, blobs []metadata.BlobLink) error
	BlobLink(ctx context.Context, repo string, d digest.Digest) (metadata.Link, error)
	LinkBlobs(ctx context.Context, repo string, blobs ...metadata.BlobLink) error
	ManifestLinks(ctx context.Context, repo string) (map[digest.Digest]metadata.Link, error)
	WithdrawManifest(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) error
	UnlinkImage(ctx context.Context, repo string, d digest.Digest, blobs []digest.Digest) ([]digest.Digest, error)
	Touch(repo string, d digest.Digest)
	Accessed(ctx context.Context, repo string, d digest.Digest) (time.Time, error)
	LastUse(ctx context.Context, d digest.Digest) (time.Time, error)
	Reidentify(ctx context.Context, ids map[string]string) ([]string, error)
	Reconcile(ctx context.Context, blobs metadata.Walker) (int, error)
}

// RunContentIndex runs the content index's conformance suite. open returns
// a new, empty store for one subtest and arranges its closing (t.Cleanup);
// subtests run in parallel, each on its own store.
//
// Access times are checked only through what a store must answer before it
// has written them (Touch is asynchronous): the suite cannot make a store
// write them, so what survives a restart is each store's own test.
func RunContentIndex(t *testing.T, open func(t *testing.T) ContentIndex) {
	tests := []struct {
		name string
		run  func(t *testing.T, s ContentIndex)
	}{
		{"tags round trip", testTags},
		{"manifests round trip", testManifests},
		{"manifest checks", testManifestChecks},
		{"a manifest admitted as it is stored", testAdmittedAsStored},
		{"links say what vouched for them", testLinkFlags},
		{"blob and manifest links are apart", testBlobLinks},
		{"invalid names are refused", testInvalidNames},
		{"lookups of nothing wrap ErrNotFound", testNotFound},
		{"manifest links of a repository", testManifestLinks},
		{"withdraw a manifest", testWithdraw},
		{"unlink an image", testUnlink},
		{"touch and last use", testTouch},
		{"reidentify an upstream", testReidentify},
		{"reconcile with the blob store", testReconcile},
		{"concurrent writers", testConcurrentContent},
		{"cancelled context", testCancelledContent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, open(t))
		})
	}
}

func manifestOf(body string) metadata.ManifestRecord {
	return metadata.ManifestRecord{
		Digest:    digest.FromString(body),
		MediaType: "application/vnd.oci.image.manifest.v1+json",
		Body:      []byte(body),
	}
}

func must(t *testing.T, errs ...error) {
	t.Helper()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func testTags(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	const repo = "dockerhub/library/nginx"
	want := metadata.TagRecord{Digest: dig("m1"), MediaType: "application/vnd.oci.image.index.v1+json",
		Size: 1234, Resolved: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	for _, tag := range []string{"latest", "1.27", "1.27-alpine", "1.25", "Z", "_x"} {
		must(t, s.PutTag(ctx, repo, tag, want))
	}
	// Repositories whose names extend or share this one's must not leak in.
	must(t, s.PutTag(ctx, repo+"-extra", "zzz", want), s.PutTag(ctx, "quay/library/nginx", "other", want))
	got, err := s.Tag(ctx, repo, "latest")
	if err != nil || got.Digest != want.Digest || got.MediaType != want.MediaType ||
		got.Size != want.Size || !got.Resolved.Equal(want.Resolved) {
		t.Fatalf("Tag = %+v, %v; want %+v", got, err, want)
	}
	moved := want
	moved.Digest = dig("m2")
	must(t, s.PutTag(ctx, repo, "latest", moved))
	if got, err := s.Tag(ctx, repo, "latest"); err != nil || got.Digest != moved.Digest {
		t.Fatalf("Tag after the tag moved = %+v, %v; want %s", got, err, moved.Digest)
	}
	tags, err := s.Tags(ctx, repo)
	// Sorted bytewise, as bbolt's keys are: upper case before "_" before lower case.
	if wantTags := []string{"1.25", "1.27", "1.27-alpine", "Z", "_x", "latest"}; err != nil || !slices.Equal(tags, wantTags) {
		t.Fatalf("Tags = %v, %v; want %v", tags, err, wantTags)
	}
	if tags, err := s.Tags(ctx, "dockerhub/unknown"); err != nil || tags == nil || len(tags) != 0 {
		t.Fatalf("Tags of an unknown repository = %#v, %v; want an empty list", tags, err)
	}
}

func testManifests(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	const repo = "gcr/distroless/static"
	m := manifestOf(`{"schemaVersion":2,"layers":[]}`)
	must(t, s.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed, MediaType: m.MediaType}))
	got, err := s.Manifest(ctx, m.Digest)
	if err != nil || got.Digest != m.Digest || got.MediaType != m.MediaType || string(got.Body) != string(m.Body) {
		t.Fatalf("Manifest = %+v, %v", got, err)
	}
	got.Body[0] = 'X' // callers own what they get
	if again, _ := s.Manifest(ctx, m.Digest); string(again.Body) != string(m.Body) {
		t.Fatal("modifying a returned body changed the stored manifest")
	}
	rec, l, err := s.RepoManifest(ctx, repo, m.Digest)
	if err != nil || string(rec.Body) != string(m.Body) || !l.Has(metadata.Confirmed) || l.Has(metadata.Admitted) ||
		l.Size != int64(len(m.Body)) || l.MediaType != m.MediaType {
		t.Fatalf("RepoManifest = %+v, %+v, %v", rec, l, err)
	}
	rec.Body[0] = 'X'
	if again, _, _ := s.RepoManifest(ctx, repo, m.Digest); string(again.Body) != string(m.Body) {
		t.Fatal("modifying a body RepoManifest returned changed the stored manifest")
	}
	// Cached, but not for this repository: the record comes back so the
	// caller can confirm it upstream, with ErrNotFound for the link.
	rec, _, err = s.RepoManifest(ctx, "gcr/distroless/base", m.Digest)
	if !errors.Is(err, storage.ErrNotFound) || rec.Digest != m.Digest || string(rec.Body) != string(m.Body) {
		t.Fatalf("RepoManifest in another repository = %+v, %v; want the record and ErrNotFound", rec, err)
	}
	// Stored again with another media type: the body is the digest's, the
	// media type the latest.
	again := m
	again.MediaType = "application/vnd.docker.distribution.manifest.v2+json"
	must(t, s.PutManifest(ctx, repo, again, metadata.Link{}))
	if got, err := s.Manifest(ctx, m.Digest); err != nil || got.MediaType != again.MediaType {
		t.Fatalf("Manifest after a second put = %+v, %v; want media type %s", got, err, again.MediaType)
	}
	empty := metadata.ManifestRecord{Digest: digest.FromString("")}
	must(t, s.PutManifest(ctx, "gcr/x", empty, metadata.Link{Flags: metadata.Confirmed}))
	if got, err := s.Manifest(ctx, empty.Digest); err != nil || len(got.Body) != 0 || got.MediaType != "" {
		t.Fatalf("empty manifest = %+v, %v", got, err)
	}
	if l, err := s.ManifestLink(ctx, "gcr/x", empty.Digest); err != nil || l.Size != 0 {
		t.Fatalf("link of the empty manifest = %+v, %v; want size 0", l, err)
	}
}

func testManifestChecks(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	bad := manifestOf(`{"a":1}`)
	bad.Body = []byte(`{"a":2}`)
	big := make([]byte, metadata.MaxManifestSize+1)
	limit := make([]byte, metadata.MaxManifestSize)
	limit[0] = 'x'
	cases := []struct {
		name string
		rec  metadata.ManifestRecord
		want error // nil: stored
	}{
		{"wrong digest", bad, verify.ErrDigestMismatch},
		{"over the size limit", metadata.ManifestRecord{Digest: digest.FromBytes(big), Body: big}, verify.ErrTooLarge},
		{"at the size limit", metadata.ManifestRecord{Digest: digest.FromBytes(limit), Body: limit}, nil},
	}
	for _, c := range cases {
		err := s.PutManifest(ctx, "dockerhub/x", c.rec, metadata.Link{Flags: metadata.Confirmed})
		if c.want == nil {
			if err != nil {
				t.Errorf("%s: PutManifest = %v", c.name, err)
			} else if got, err := s.Manifest(ctx, c.rec.Digest); err != nil || len(got.Body) != len(c.rec.Body) {
				t.Errorf("%s: stored manifest = %d bytes, %v; want %d", c.name, len(got.Body), err, len(c.rec.Body))
			}
			continue
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: PutManifest = %v; want %v", c.name, err, c.want)
		}
		if _, err := s.Manifest(ctx, c.rec.Digest); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s: refused manifest stored anyway: %v", c.name, err)
		}
		if _, err := s.ManifestLink(ctx, "dockerhub/x", c.rec.Digest); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s: refused manifest linked anyway: %v", c.name, err)
		}
	}
}

func testAdmittedAsStored(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	const repo = "quay/app"
	m := manifestOf(`{"schemaVersion":2,"layers":[{"digest":"y"}]}`)
	layer := dig("layer y")
	// Without Admitted on the manifest's link, nothing is admitted.
	must(t, s.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed}, metadata.BlobLink{Digest: layer, Size: 9}))
	if _, err := s.BlobLink(ctx, repo, layer); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a blob was admitted by a manifest that was not: %v", err)
	}
	must(t, s.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed | metadata.Admitted},
		metadata.BlobLink{Digest: layer, Size: 9, Flags: metadata.Confirmed}))
	if l, err := s.BlobLink(ctx, repo, layer); err != nil || !l.Has(metadata.Admitted) || l.Has(metadata.Confirmed) || l.Size != 9 {
		t.Fatalf("blob after an admitting PutManifest = %+v, %v; want admitted, not confirmed, size 9", l, err)
	}
	if l, _ := s.ManifestLink(ctx, repo, m.Digest); !l.Has(metadata.Admitted | metadata.Confirmed) {
		t.Fatalf("manifest link = %+v, want admitted and confirmed", l)
	}
	other := manifestOf(`{"other":1}`)
	err := s.PutManifest(ctx, repo, other, metadata.Link{Flags: metadata.Admitted}, metadata.BlobLink{Digest: "sha256:nope", Size: 1})
	if err == nil || !strings.Contains(err.Error(), "sha256:nope") {
		t.Fatalf("PutManifest admitting an invalid digest = %v; want an error naming it", err)
	}
	if _, err := s.Manifest(ctx, other.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a manifest whose admission was refused was stored: %v", err)
	}
}

func testLinkFlags(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	const repo = "gcr/distroless/static"
	m := manifestOf(`{"schemaVersion":2,"layers":[{"digest":"x"}]}`)
	layer := dig("layer")
	must(t, s.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed}))
	steps := []struct {
		name  string
		do    func() error
		flags metadata.LinkFlags
		size  int64
	}{
		{"admission records the declared size and confirms nothing", func() error {
			return s.AdmitManifest(ctx, repo, m.Digest, []metadata.BlobLink{{Digest: layer, Size: 5, Flags: metadata.Confirmed}})
		}, metadata.Admitted, 5},
		{"flags accumulate and a known size is kept", func() error {
			return s.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: layer, Size: 7, Flags: metadata.Confirmed})
		}, metadata.Admitted | metadata.Confirmed, 5},
		{"the upstream's word replaces a declared size", func() error {
			return s.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: layer, Size: 7, UpstreamSize: true})
		}, metadata.Admitted | metadata.Confirmed, 7},
		{"a later declaration does not replace the upstream's", func() error {
			return s.AdmitManifest(ctx, repo, m.Digest, []metadata.BlobLink{{Digest: layer, Size: 9}})
		}, metadata.Admitted | metadata.Confirmed, 7},
		{"a link without a size keeps the size", func() error {
			return s.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: layer, UpstreamSize: true})
		}, metadata.Admitted | metadata.Confirmed, 7},
	}
	for _, st := range steps {
		must(t, st.do())
		if l, err := s.BlobLink(ctx, repo, layer); err != nil || l.Flags != st.flags || l.Size != st.size {
			t.Fatalf("%s: link = %+v, %v; want flags %b, size %d", st.name, l, err, st.flags, st.size)
		}
	}
	if l, err := s.ManifestLink(ctx, repo, m.Digest); err != nil || !l.Has(metadata.Admitted|metadata.Confirmed) {
		t.Fatalf("manifest after AdmitManifest = %+v, %v; want admitted and confirmed", l, err)
	}
	if _, err := s.BlobLink(ctx, "gcr/distroless/base", layer); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("layer linked into a repository that never referenced it: %v", err)
	}
	// A manifest link's media type is per repository, replaced when given,
	// kept when not; its size is kept once known.
	must(t, s.LinkManifest(ctx, "quay/x", m.Digest, metadata.Link{Flags: metadata.Confirmed, MediaType: "text/html"}))
	if l, _ := s.ManifestLink(ctx, repo, m.Digest); l.MediaType != "" {
		t.Fatalf("another repository's media type leaked in: %+v", l)
	}
	must(t, s.LinkManifest(ctx, "quay/x", m.Digest, metadata.Link{Size: 3}),
		s.LinkManifest(ctx, "quay/x", m.Digest, metadata.Link{Size: 4, MediaType: "text/plain"}))
	if l, err := s.ManifestLink(ctx, "quay/x", m.Digest); err != nil || l.MediaType != "text/plain" || l.Size != 3 || !l.Has(metadata.Confirmed) {
		t.Fatalf("manifest link after merges = %+v, %v; want text/plain, size 3, confirmed", l, err)
	}
	// One call may list a blob twice; both merges apply.
	dup := dig("twice")
	must(t, s.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: dup, Size: 2}, metadata.BlobLink{Digest: dup, Flags: metadata.Confirmed, Size: 3}))
	if l, err := s.BlobLink(ctx, repo, dup); err != nil || l.Flags != metadata.Confirmed || l.Size != 2 {
		t.Fatalf("a blob linked twice in one call = %+v, %v; want confirmed, size 2", l, err)
	}
	must(t, s.LinkBlobs(ctx, repo)) // nothing to link is no error
}

func testBlobLinks(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	d := dig("layer")
	m := manifestOf(`{"m":1}`)
	must(t, s.LinkBlobs(ctx, "dockerhub/library/alpine", metadata.BlobLink{Digest: d, Size: 3_000_000, Flags: metadata.Confirmed}),
		s.PutManifest(ctx, "dockerhub/library/alpine", m, metadata.Link{Flags: metadata.Confirmed}))
	if l, err := s.BlobLink(ctx, "dockerhub/library/alpine", d); err != nil || !l.Has(metadata.Confirmed) || l.Size != 3_000_000 {
		t.Fatalf("BlobLink = %+v, %v; want confirmed, 3000000 bytes", l, err)
	}
	lookups := []struct {
		name string
		err  error
	}{
		{"the blob in another repository", errOf(s.BlobLink(ctx, "dockerhub/library/busybox", d))},
		{"a blob link as a manifest link", errOf(s.ManifestLink(ctx, "dockerhub/library/alpine", d))},
		{"a manifest link as a blob link", errOf(s.BlobLink(ctx, "dockerhub/library/alpine", m.Digest))},
	}
	for _, c := range lookups {
		if !errors.Is(c.err, storage.ErrNotFound) {
			t.Errorf("%s = %v; want ErrNotFound", c.name, c.err)
		}
	}
}

func errOf[T any](_ T, err error) error { return err }

func errOf3[T, U any](_ T, _ U, err error) error { return err }

func testInvalidNames(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	d := dig("x")
	cases := []struct {
		name, want string
		err        error
	}{
		{"empty repo", "invalid repository name", s.PutTag(ctx, "", "latest", metadata.TagRecord{Digest: d})},
		{"empty tag", "invalid tag", s.PutTag(ctx, "a/b", "", metadata.TagRecord{Digest: d})},
		{"NUL in tag", "invalid tag", s.PutTag(ctx, "a/b", "t\x00", metadata.TagRecord{Digest: d})},
		{"NUL in repo", "invalid repository name", s.LinkBlobs(ctx, "a\x00b", metadata.BlobLink{Digest: d, Size: 1})},
		{"bad digest in tag", "sha256:nope", s.PutTag(ctx, "a/b", "t", metadata.TagRecord{Digest: "sha256:nope"})},
		{"bad digest link", "sha256:../../x", s.LinkBlobs(ctx, "a/b", metadata.BlobLink{Digest: "sha256:../../x", Size: 1})},
		{"negative size", "negative size", s.LinkBlobs(ctx, "a/b", metadata.BlobLink{Digest: d, Size: -1})},
		{"bad admitted blob", "sha256:bad", s.AdmitManifest(ctx, "gcr/x", d, []metadata.BlobLink{{Digest: "sha256:bad", Size: 1}})},
		{"bad manifest digest", "sha256:short", errOf(s.Manifest(ctx, "sha256:short"))},
		{"bad withdrawal", "sha256:bad", s.WithdrawManifest(ctx, "a/b", "sha256:bad", nil)},
		{"bad unlink repo", "invalid repository name", errOf(s.UnlinkImage(ctx, "a\x00b", d, nil))},
		{"empty manifest links repo", "invalid repository name", errOf(s.ManifestLinks(ctx, ""))},
		{"bad last use digest", "sha256:short", errOf(s.LastUse(ctx, "sha256:short"))},
		{"upstream name with a slash", "invalid upstream name", errOf(s.Reidentify(ctx, map[string]string{"a/b": "x"}))},
	}
	for _, c := range cases {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) || errors.Is(c.err, storage.ErrNotFound) {
			t.Errorf("%s: %v; want an error saying %q, not a miss", c.name, c.err, c.want)
		}
	}
	if tags, err := s.Tags(ctx, "a/b"); err != nil || len(tags) != 0 {
		t.Errorf("a refused tag was stored: %v, %v", tags, err)
	}
}

func testNotFound(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	const repo = "dockerhub/library/nginx"
	d := dig("nothing")
	cases := []struct {
		name string
		err  error
	}{
		{"Tag", errOf(s.Tag(ctx, repo, "latest"))},
		{"Manifest", errOf(s.Manifest(ctx, d))},
		{"ManifestLink", errOf(s.ManifestLink(ctx, repo, d))},
		{"BlobLink", errOf(s.BlobLink(ctx, repo, d))},
		{"Accessed", errOf(s.Accessed(ctx, repo, d))},
		{"LastUse", errOf(s.LastUse(ctx, d))},
		{"RepoManifest", errOf3(s.RepoManifest(ctx, repo, d))},
	}
	for _, c := range cases {
		if !errors.Is(c.err, storage.ErrNotFound) {
			t.Errorf("%s of nothing = %v; want ErrNotFound", c.name, c.err)
		}
	}
	// Asking twice does not turn a miss into an answer.
	if _, err := s.Tag(ctx, repo, "latest"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Tag of nothing, again = %v", err)
	}
	must(t, s.PutTag(ctx, repo, "latest", metadata.TagRecord{Digest: d}))
	if got, err := s.Tag(ctx, repo, "latest"); err != nil || got.Digest != d {
		t.Errorf("Tag after a miss and a put = %+v, %v; want %s", got, err, d)
	}
}

// contentFixture links one image into two repositories of different
// upstreams and a second image into the first. Last uses are commit times
// written by Reconcile, which every store writes at once.
type contentFixture struct {
	a, b                   string
	m1, m2                 metadata.ManifestRecord
	shared, only1, cfg, l3 digest.Digest
	at                     time.Time
}

func newContentFixture(t *testing.T, s ContentIndex) contentFixture {
	t.Helper()
	ctx := t.Context()
	f := contentFixture{
		a: "dockerhub/library/app", b: "quay/library/app",
		m1: manifestOf(`{"image":1}`), m2: manifestOf(`{"image":2}`),
		shared: dig("shared layer"), only1: dig("layer of image 1"),
		cfg: dig("config of image 1"), l3: dig("layer of image 2"),
		at: time.Unix(1_700_000_000, 0),
	}
	admitted := metadata.Link{Flags: metadata.Confirmed | metadata.Admitted}
	must(t,
		s.PutManifest(ctx, f.a, f.m1, admitted,
			metadata.BlobLink{Digest: f.shared, Size: 10}, metadata.BlobLink{Digest: f.only1, Size: 20}, metadata.BlobLink{Digest: f.cfg, Size: 2}),
		s.PutManifest(ctx, f.b, f.m1, admitted, metadata.BlobLink{Digest: f.shared, Size: 10}),
		s.PutManifest(ctx, f.a, f.m2, admitted, metadata.BlobLink{Digest: f.l3, Size: 30}),
		s.LinkBlobs(ctx, f.a, metadata.BlobLink{Digest: f.shared, Flags: metadata.Confirmed, Size: 10, UpstreamSize: true}),
		s.PutTag(ctx, f.a, "latest", metadata.TagRecord{Digest: f.m1.Digest}),
		s.PutTag(ctx, f.a, "1.0", metadata.TagRecord{Digest: f.m1.Digest}),
		s.PutTag(ctx, f.a, "2.0", metadata.TagRecord{Digest: f.m2.Digest}),
		s.PutTag(ctx, f.b, "latest", metadata.TagRecord{Digest: f.m1.Digest}),
	)
	if _, err := s.Reconcile(ctx, walker{blobs: []digest.Digest{f.m1.Digest, f.shared, f.only1, f.cfg}, at: f.at}); err != nil {
		t.Fatal(err)
	}
	return f
}

func testManifestLinks(t *testing.T, s ContentIndex) {
	f := newContentFixture(t, s)
	ctx := t.Context()
	links, err := s.ManifestLinks(ctx, f.a)
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 2 || !links[f.m1.Digest].Has(metadata.Confirmed|metadata.Admitted) || !links[f.m2.Digest].Has(metadata.Admitted) ||
		links[f.m1.Digest].Size != int64(len(f.m1.Body)) {
		t.Errorf("ManifestLinks(%s) = %+v; want both images, admitted, with their sizes", f.a, links)
	}
	cases := []struct {
		repo string
		want int
	}{{f.b, 1}, {"dockerhub/library/ap", 0}, {"dockerhub/library/app/sub", 0}, {"nowhere/x", 0}}
	for _, c := range cases {
		if links, err := s.ManifestLinks(ctx, c.repo); err != nil || links == nil || len(links) != c.want {
			t.Errorf("ManifestLinks(%s) = %#v, %v; want %d", c.repo, links, err, c.want)
		}
	}
}

func testWithdraw(t *testing.T, s ContentIndex) {
	f := newContentFixture(t, s)
	ctx := t.Context()
	missing := dig("never linked")
	// Read first, so that a store with a cache has the links cached.
	for _, d := range []digest.Digest{f.only1, f.cfg} {
		if l, err := s.BlobLink(ctx, f.a, d); err != nil || !l.Has(metadata.Admitted) {
			t.Fatalf("blob %s before withdrawal = %+v, %v", d, l, err)
		}
	}
	must(t, s.WithdrawManifest(ctx, f.a, f.m1.Digest, []digest.Digest{f.only1, f.cfg, missing}))
	l, err := s.ManifestLink(ctx, f.a, f.m1.Digest)
	if err != nil || l.Has(metadata.Admitted) || !l.Has(metadata.Confirmed) || l.Size != int64(len(f.m1.Body)) {
		t.Errorf("manifest link after withdrawal = %+v, %v; want confirmed, not admitted, size kept", l, err)
	}
	if _, l, err := s.RepoManifest(ctx, f.a, f.m1.Digest); err != nil || l.Has(metadata.Admitted) {
		t.Errorf("RepoManifest after withdrawal = %+v, %v; want the link not admitted", l, err)
	}
	for _, d := range []digest.Digest{f.only1, f.cfg} {
		if l, err := s.BlobLink(ctx, f.a, d); err != nil || l.Has(metadata.Admitted) || l.Size == 0 {
			t.Errorf("blob %s after withdrawal = %+v, %v; want not admitted, size kept", d, l, err)
		}
	}
	untouched := []struct {
		name string
		l    metadata.Link
		want metadata.LinkFlags
	}{
		{"an unlisted blob", must2(s.BlobLink(ctx, f.a, f.shared)), metadata.Confirmed | metadata.Admitted},
		{"the image in another repository", must2(s.ManifestLink(ctx, f.b, f.m1.Digest)), metadata.Confirmed | metadata.Admitted},
		{"another image", must2(s.ManifestLink(ctx, f.a, f.m2.Digest)), metadata.Confirmed | metadata.Admitted},
	}
	for _, c := range untouched {
		if c.l.Flags != c.want {
			t.Errorf("withdrawal reached %s: %+v", c.name, c.l)
		}
	}
	if _, err := s.BlobLink(ctx, f.a, missing); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("withdrawal created a link for a missing blob: %v", err)
	}
	// Admitting again restores what was withdrawn.
	must(t, s.AdmitManifest(ctx, f.a, f.m1.Digest, []metadata.BlobLink{{Digest: f.only1, Size: 20}}))
	if l, _ := s.BlobLink(ctx, f.a, f.only1); !l.Has(metadata.Admitted) || l.Size != 20 {
		t.Errorf("blob after readmission = %+v", l)
	}
	if err := s.WithdrawManifest(ctx, "dockerhub/none", missing, nil); err != nil {
		t.Errorf("withdrawing an unknown manifest: %v; want nothing done and no error", err)
	}
}

func must2[T any](v T, _ error) T { return v }

func testUnlink(t *testing.T, s ContentIndex) {
	f := newContentFixture(t, s)
	ctx := t.Context()
	// Read first, so that a store with a cache has what goes cached.
	for _, d := range []digest.Digest{f.shared, f.only1} {
		must(t, errOf(s.BlobLink(ctx, f.a, d)))
	}
	must(t, errOf(s.Tag(ctx, f.a, "latest")), errOf(s.Manifest(ctx, f.m1.Digest)))
	orphans, err := s.UnlinkImage(ctx, f.a, f.m1.Digest, []digest.Digest{f.shared, f.only1, f.cfg, f.only1})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(orphans, []digest.Digest{f.only1, f.cfg}) {
		t.Errorf("orphans = %v; want the layer and config only image 1 in %s had, once each, in order", orphans, f.a)
	}
	gone := []struct {
		name string
		err  error
	}{
		{"manifest link", errOf(s.ManifestLink(ctx, f.a, f.m1.Digest))},
		{"shared layer's link in " + f.a, errOf(s.BlobLink(ctx, f.a, f.shared))},
		{"layer link", errOf(s.BlobLink(ctx, f.a, f.only1))},
		{"config link", errOf(s.BlobLink(ctx, f.a, f.cfg))},
		{"tag latest", errOf(s.Tag(ctx, f.a, "latest"))},
		{"tag 1.0", errOf(s.Tag(ctx, f.a, "1.0"))},
		{"an orphan's last use", errOf(s.LastUse(ctx, f.only1))},
	}
	for _, c := range gone {
		if !errors.Is(c.err, storage.ErrNotFound) {
			t.Errorf("%s after unlink: %v; want ErrNotFound", c.name, c.err)
		}
	}
	if tags, _ := s.Tags(ctx, f.a); !slices.Equal(tags, []string{"2.0"}) {
		t.Errorf("tags of %s after unlink = %v; want only 2.0, which names image 2", f.a, tags)
	}
	kept := []struct {
		name string
		err  error
	}{
		{"the manifest body, which " + f.b + " still links", errOf(s.Manifest(ctx, f.m1.Digest))},
		{f.b + "'s link of the shared layer", errOf(s.BlobLink(ctx, f.b, f.shared))},
		{f.b + "'s tag", errOf(s.Tag(ctx, f.b, "latest"))},
		{"the shared layer's last use", errOf(s.LastUse(ctx, f.shared))},
		{"image 2", errOf3(s.RepoManifest(ctx, f.a, f.m2.Digest))},
	}
	for _, c := range kept {
		if c.err != nil {
			t.Errorf("%s went: %v", c.name, c.err)
		}
	}
	// The last repository lets go: the body and the shared layer go too.
	orphans, err = s.UnlinkImage(ctx, f.b, f.m1.Digest, []digest.Digest{f.shared})
	if err != nil || !slices.Equal(orphans, []digest.Digest{f.shared}) {
		t.Fatalf("second unlink = %v, %v; want the shared layer orphaned", orphans, err)
	}
	if _, err := s.Manifest(ctx, f.m1.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the manifest body outlived its last link: %v", err)
	}
	if _, err := s.LastUse(ctx, f.m1.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the manifest's last use outlived it: %v", err)
	}
	// Unlinking again finds nothing and orphans nothing it did not list.
	if orphans, err := s.UnlinkImage(ctx, f.a, f.m1.Digest, nil); err != nil || len(orphans) != 0 {
		t.Errorf("unlinking an unlinked image = %v, %v; want nothing", orphans, err)
	}
	// An orphan the caller failed to delete from the blob store is seen
	// again by Reconcile, so eviction still accounts for it.
	at := time.Unix(1_800_000_000, 0)
	if n, err := s.Reconcile(ctx, walker{blobs: []digest.Digest{f.only1, f.l3}, at: at}); err != nil || n != 2 {
		t.Fatalf("Reconcile = %d, %v; want both blobs' last use written", n, err)
	}
	if got, err := s.LastUse(ctx, f.only1); err != nil || !got.Equal(at) {
		t.Errorf("last use of a leftover orphan after Reconcile = %v, %v; want its commit time", got, err)
	}
}

func testTouch(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	d, other := dig("shared layer"), dig("other layer")
	before := time.Now()
	s.Touch("dockerhub/library/nginx", d)
	s.Touch("", d)                            // ignored, not a panic
	s.Touch("dockerhub/library/nginx", "bad") // ignored
	first, err := s.Accessed(ctx, "dockerhub/library/nginx", d)
	if err != nil || first.Before(before.Add(-time.Second)) || first.After(time.Now().Add(time.Second)) {
		t.Fatalf("Accessed right after Touch = %v, %v; want about now", first, err)
	}
	if got, err := s.LastUse(ctx, d); err != nil || !got.Equal(first) {
		t.Fatalf("LastUse after one Touch = %v, %v; want %v", got, err, first)
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
	if _, err := s.Accessed(ctx, "dockerhub/library/alpine", d); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Accessed in a repository that never used it = %v; want ErrNotFound", err)
	}
	// A commit time older than the use leaves the use be.
	if _, err := s.Reconcile(ctx, walker{blobs: []digest.Digest{d}, at: first.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LastUse(ctx, d); err != nil || !got.Equal(second) {
		t.Errorf("LastUse after an older commit time = %v, %v; want the use %v", got, err, second)
	}
}

func testReidentify(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	m := manifestOf(`{"schemaVersion":2}`)
	layer := dig("layer")
	for _, repo := range []string{"vendor/app", "vendorx/app", "vendor-y/app", "hub/library/app"} {
		must(t,
			s.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed | metadata.Admitted}, metadata.BlobLink{Digest: layer, Size: 3}),
			s.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: layer, Size: 3, Flags: metadata.Confirmed}),
			s.PutTag(ctx, repo, "v1", metadata.TagRecord{Digest: m.Digest, Resolved: t0}))
		// Read, so that a store with a cache has them cached.
		must(t, errOf(s.BlobLink(ctx, repo, layer)), errOf(s.ManifestLink(ctx, repo, m.Digest)), errOf(s.Tag(ctx, repo, "v1")))
	}
	ids := map[string]string{"vendor": "https://registry.vendor.example", "vendorx": "https://x.example",
		"vendor-y": "https://y.example", "hub": "https://hub.example"}
	for round := range 2 {
		if changed, err := s.Reidentify(ctx, ids); err != nil || len(changed) != 0 {
			t.Fatalf("round %d: Reidentify of names seen before with the same URLs = %v, %v; want nothing withdrawn", round, changed, err)
		}
	}
	ids["vendor"] = "https://mirror.elsewhere.example"
	changed, err := s.Reidentify(ctx, ids)
	if err != nil || fmt.Sprint(changed) != "[vendor]" {
		t.Fatalf("Reidentify after vendor moved = %v, %v; want [vendor]", changed, err)
	}
	for _, tc := range []struct {
		repo      string
		confirmed bool
	}{{"vendor/app", false}, {"vendorx/app", true}, {"vendor-y/app", true}, {"hub/library/app", true}} {
		bl, _ := s.BlobLink(ctx, tc.repo, layer)
		ml, _ := s.ManifestLink(ctx, tc.repo, m.Digest)
		if bl.Has(metadata.Confirmed) != tc.confirmed || ml.Has(metadata.Confirmed) != tc.confirmed {
			t.Errorf("%s: blob %+v, manifest %+v; want confirmed %v", tc.repo, bl, ml, tc.confirmed)
		}
		if !bl.Has(metadata.Admitted) || bl.Size != 3 || !ml.Has(metadata.Admitted) {
			t.Errorf("%s: links lost what is not the registry's word: blob %+v, manifest %+v", tc.repo, bl, ml)
		}
		_, err := s.Tag(ctx, tc.repo, "v1")
		if gone := errors.Is(err, storage.ErrNotFound); gone == tc.confirmed {
			t.Errorf("%s: tag after the move: %v", tc.repo, err)
		}
	}
	if _, err := s.Manifest(ctx, m.Digest); err != nil {
		t.Errorf("the manifest body went with the confirmations: %v", err)
	}
	if changed, _ := s.Reidentify(ctx, ids); len(changed) != 0 {
		t.Fatalf("the new identity was not recorded: %v withdrawn again", changed)
	}
	if changed, err := s.Reidentify(ctx, map[string]string{"new": "https://new.example"}); err != nil || len(changed) != 0 {
		t.Fatalf("Reidentify of a new name = %v, %v; want it only recorded", changed, err)
	}
}

// walker lists fixed blobs with one commit time, as the blob store would.
type walker struct {
	blobs []digest.Digest
	at    time.Time
	err   error
}

func (w walker) Walk(_ context.Context, fn func(digest.Digest, int64, time.Time) error) error {
	for _, d := range w.blobs {
		if err := fn(d, 1, w.at); err != nil {
			return err
		}
	}
	return w.err
}

func testReconcile(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	at := time.Unix(1_750_000_000, 123)
	blobs := make([]digest.Digest, 5000) // more than one batch of a store that batches
	for i := range blobs {
		blobs[i] = dig(fmt.Sprint("blob ", i))
	}
	steps := []struct {
		name string
		w    walker
		want int
		last time.Time
	}{
		{"first run writes every blob", walker{blobs: blobs, at: at}, len(blobs), at},
		{"a second run writes nothing", walker{blobs: blobs, at: at}, 0, at},
		{"an older commit time writes nothing", walker{blobs: blobs[:10], at: at.Add(-time.Hour)}, 0, at},
		{"a later commit time is written", walker{blobs: blobs[:10], at: at.Add(time.Hour)}, 10, at.Add(time.Hour)},
	}
	for _, st := range steps {
		n, err := s.Reconcile(ctx, st.w)
		if err != nil || n != st.want {
			t.Fatalf("%s: Reconcile = %d, %v; want %d", st.name, n, err, st.want)
		}
		if got, err := s.LastUse(ctx, blobs[0]); err != nil || !got.Equal(st.last) {
			t.Fatalf("%s: LastUse = %v, %v; want %v", st.name, got, err, st.last)
		}
	}
	failing := walker{blobs: blobs[:1], at: at, err: errors.New("listing the blob store: disk on fire")}
	if _, err := s.Reconcile(ctx, failing); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Reconcile with a failing walk = %v; want the walk's error", err)
	}
}

func testConcurrentContent(t *testing.T, s ContentIndex) {
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Go(func() {
			repo := fmt.Sprintf("dockerhub/team%d/app", w%4)
			for i := range 10 {
				d := dig(fmt.Sprintf("%d/%d", w, i))
				m := manifestOf(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))
				// Every writer also admits one shared layer, in every
				// repository, with the others.
				shared := metadata.BlobLink{Digest: dig("shared"), Size: 1}
				for _, err := range []error{
					s.LinkBlobs(ctx, repo, metadata.BlobLink{Digest: d, Size: int64(i), Flags: metadata.Confirmed}),
					s.PutTag(ctx, repo, fmt.Sprintf("w%d-%d", w, i), metadata.TagRecord{Digest: d, Size: int64(i)}),
					s.PutManifest(ctx, repo, m, metadata.Link{Flags: metadata.Confirmed | metadata.Admitted}, shared,
						metadata.BlobLink{Digest: d, Size: int64(i)}),
				} {
					if err != nil {
						errs <- err
					}
				}
				s.Touch(repo, d)
				if l, err := s.BlobLink(ctx, repo, d); !l.Has(metadata.Confirmed|metadata.Admitted) || err != nil {
					errs <- fmt.Errorf("link %s in %s = %+v, %v after LinkBlobs and PutManifest", d, repo, l, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if tags, err := s.Tags(ctx, "dockerhub/team0/app"); err != nil || len(tags) != 2*10 {
		t.Fatalf("team0 has %d tags (%v), want 20", len(tags), err)
	}
}

func testCancelledContent(t *testing.T, s ContentIndex) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	d := dig("x")
	cases := []struct {
		name string
		err  error
	}{
		{"Tag", errOf(s.Tag(ctx, "a/b", "t"))},
		{"BlobLink", errOf(s.BlobLink(ctx, "a/b", d))},
		{"LinkBlobs", s.LinkBlobs(ctx, "a/b", metadata.BlobLink{Digest: d, Size: 1})},
		{"PutTag", s.PutTag(ctx, "a/b", "t", metadata.TagRecord{Digest: d})},
		{"ManifestLinks", errOf(s.ManifestLinks(ctx, "a/b"))},
	}
	for _, c := range cases {
		if !errors.Is(c.err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v; want context.Canceled", c.name, c.err)
		}
	}
	if _, err := s.Tag(t.Context(), "a/b", "t"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a write with a cancelled context was stored: %v", err)
	}
}
