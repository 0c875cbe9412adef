package signature_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/verify/signature"
	st "github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

// floodFetcher reads a real registry, except that its referrers list is
// the upstream's invention: descs, whatever the registry holds.
type floodFetcher struct {
	*st.Fetcher
	descs     []ocispec.Descriptor
	manifests atomic.Int64
}

func (f *floodFetcher) Manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	f.manifests.Add(1)
	return f.Fetcher.Manifest(ctx, ref)
}

func (f *floodFetcher) Referrers(context.Context, digest.Digest, string) ([]ocispec.Descriptor, error) {
	return f.descs, nil
}

// A hostile upstream lists thousands of referrers without an
// artifactType, each claiming to be 1 byte: the caps bound how many
// manifests are read and how many bytes, whatever the list claims.
func TestReferrersFloodStaysWithinTheCaps(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// A real manifest, much larger than the 1 byte each entry claims.
	big := e.u.PushImage(t, repo, "big", 64, 40)
	key := st.NewKey(t, st.ECDSA)
	cases := []struct {
		name     string
		cfg      config.Signature
		maxReads int64
		message  string
	}{
		{"maxSignatures", config.Signature{MaxSignatures: 3, MaxBytes: 1 << 30}, 1 + 3,
			"stopped after examining 3 signatures"},
		{"maxBytes", config.Signature{MaxSignatures: 1000, MaxBytes: 4096}, 3,
			"exceed the policy's maxBytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := &floodFetcher{Fetcher: e.fetcher}
			for range 5000 {
				f.descs = append(f.descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest,
					Digest: digest.Digest(big.Digest.String()), Size: 1})
			}
			cfg := tc.cfg
			cfg.Keys = []string{e.keyFile(t, key)}
			v := newVerifier(t, cfg, signature.Options{})
			ev, err := v.Verify(t.Context(), f, e.d, e.subject.MediaType)
			if err != nil {
				t.Fatal(err)
			}
			if n := f.manifests.Load(); n > tc.maxReads {
				t.Errorf("read %d manifests for one image; the caps allow at most %d", n, tc.maxReads)
			}
			if ev.Verified || !strings.Contains(ev.Message, tc.message) {
				t.Errorf("evidence %+v, want a refusal saying %q", ev, tc.message)
			}
		})
	}
}

// Identity regular expressions match anywhere in the value, as cosign's
// do: an unanchored one trusts more than it reads as. This pins the
// behaviour the configuration documents.
func TestIdentityRegExpAnchoring(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, issuer, subjectRegExp string
		verified                    bool
	}{
		{"unanchored subject matches a longer address", "", `@example\.com`, true},
		{"anchored subject does not", "", `^[^@]+@example\.com$`, false},
		{"unanchored issuer matches a longer URL", `https://issuer\.test`, `^mallory@`, true},
		{"anchored issuer does not", `^https://issuer\.test$`, `^mallory@`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.d,
				Identity: "mallory@example.com.evil.test", Issuer: "https://issuer.test.evil.test"}), "")
			id := config.KeylessIdentity{IssuerRegExp: tc.issuer, SubjectRegExp: tc.subjectRegExp}
			if id.IssuerRegExp == "" {
				id.IssuerRegExp = `issuer\.test`
			}
			cfg := config.Signature{Keyless: []config.KeylessIdentity{id}, TrustedRoot: e.rootFile(t, e.vs)}
			ev, err := newVerifier(t, cfg, signature.Options{}).Verify(t.Context(), e.fetcher, e.d, e.subject.MediaType)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Verified != tc.verified {
				t.Fatalf("evidence %+v, want verified=%v", ev, tc.verified)
			}
			if !tc.verified && !strings.Contains(ev.Message, "not an identity the policy trusts") {
				t.Fatalf("evidence %+v, want a refusal naming the identity", ev)
			}
		})
	}
}
