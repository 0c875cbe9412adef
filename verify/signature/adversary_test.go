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

// Signatures confused with others: each verifies somewhere, none for this
// image under this policy.
func TestSignatureConfusion(t *testing.T) {
	t.Parallel()
	const id, iss = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main", ghIssuer
	cases := []struct {
		name    string
		setup   func(t *testing.T, e *env) config.Signature
		message string
	}{
		{
			name: "keyless signature with the Rekor bundle of another",
			setup: func(t *testing.T, e *env) config.Signature {
				mine := e.vs.SignKeyless(t, id, iss, e.payload())
				other := e.vs.SignKeyless(t, id, iss, st.Payload(e.u.Host+"/"+repo, e.other))
				mine.Annotations[st.AnnotationBundle] = other.Annotations[st.AnnotationBundle]
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{mine})
				return e.keyless(t)
			},
			message: "transparency-log entry does not verify",
		},
		{
			name: "key signature with the Rekor bundle of another, log required",
			setup: func(t *testing.T, e *env) config.Signature {
				k := st.NewKey(t, st.ECDSA)
				mine := e.vs.SignKeyWithLog(t, k, e.payload())
				other := e.vs.SignKeyWithLog(t, k, st.Payload(e.u.Host+"/"+repo, e.other))
				mine.Annotations[st.AnnotationBundle] = other.Annotations[st.AnnotationBundle]
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{mine})
				return config.Signature{Keys: []string{e.keyFile(t, k)}, TrustedRoot: e.rootFile(t, e.vs), TransparencyLog: 1}
			},
			message: "transparency-log entry does not verify",
		},
		{
			name: "payload names the digest in upper case",
			setup: func(t *testing.T, e *env) config.Signature {
				k := st.NewKey(t, st.ECDSA)
				upper := digest.Digest("sha256:" + strings.ToUpper(e.d.Encoded()))
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, st.Payload(e.u.Host+"/"+repo, upper))})
				return config.Signature{Keys: []string{e.keyFile(t, k)}}
			},
			message: "names another image",
		},
		{
			name: "payload names the image by another algorithm",
			setup: func(t *testing.T, e *env) config.Signature {
				k := st.NewKey(t, st.ECDSA)
				body, _, _, err := e.fetcher.Manifest(t.Context(), e.d.String())
				if err != nil {
					t.Fatal(err)
				}
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, st.Payload(e.u.Host+"/"+repo, digest.SHA512.FromBytes(body)))})
				return config.Signature{Keys: []string{e.keyFile(t, k)}}
			},
			message: "names another image (sha512:",
		},
		{
			name: "keyless bundle of another image listed as this one's referrer",
			setup: func(t *testing.T, e *env) config.Signature {
				e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.other, Identity: id, Issuer: iss}), "")
				return e.keyless(t)
			},
			message: "names another image (" + "sha256:",
		},
		{
			name: "keyless signature from another Sigstore",
			setup: func(t *testing.T, e *env) config.Signature {
				other := st.NewVirtualSigstore(t)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{other.SignKeyless(t, id, iss, e.payload())})
				return e.keyless(t)
			},
			message: "is a keyless signature by",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			cfg := tc.setup(t, e)
			ev, err := newVerifier(t, cfg, signature.Options{}).Verify(t.Context(), e.fetcher, e.d, e.subject.MediaType)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Verified || !strings.Contains(ev.Message, tc.message) {
				t.Fatalf("evidence %+v, want a refusal saying %q", ev, tc.message)
			}
			t.Logf("%s", ev.Message)
		})
	}
}
