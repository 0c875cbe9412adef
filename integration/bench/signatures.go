package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/verify/notation/notationtest"
	"github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

// The signature formats scenario 12 measures, one policy each; the
// repositories under origin/bench/<kind>/ are the policy's.
const (
	sigKey      = "sig-key"      // cosign with a key, tag scheme ("sha256-<hex>.sig")
	sigKeyless  = "sig-keyless"  // cosign v3 Sigstore bundle, keyless, as a referrer
	sigNotation = "sig-notation" // Notary Project signature (JWS), as a referrer
)

var sigKinds = []string{sigKey, sigKeyless, sigNotation}

// The keyless signer's identity, as a GitHub Actions workflow signs.
const (
	keylessIssuer  = "https://token.actions.githubusercontent.com"
	keylessSubject = "https://github.com/airlock-registry/bench/.github/workflows/release.yml@refs/heads/main"
)

// signers makes the signatures scenario 12 verifies, with the test
// fixtures of verify/signature and verify/notation: real keys, an
// in-process Sigstore (Fulcio CA with CT log, Rekor, timestamp authority)
// and a Notation CA. Their trust material is written where airlock's
// configuration points: keyPath, rootPath (trusted_root.json), caPath.
type signers struct {
	key      *signaturetest.Key
	sigstore *signaturetest.VirtualSigstore
	pki      *notationtest.PKI

	keyPath, rootPath, caPath string
}

func newSigners(ctx context.Context, dir string) (*signers, error) {
	dir = filepath.Join(dir, "trust")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &signers{}
	err := fixtures(ctx, dir, func(tb testing.TB) {
		s.key = signaturetest.NewKey(tb, signaturetest.ECDSA)
		s.keyPath = s.key.WritePublic(tb, dir)
		s.sigstore = signaturetest.NewVirtualSigstore(tb)
		s.rootPath = s.sigstore.WriteTrustedRoot(tb, dir)
		s.pki = notationtest.NewPKI(tb, notationtest.PKIOptions{})
	})
	if err != nil {
		return nil, fmt.Errorf("make the signing keys and trust material: %w", err)
	}
	s.caPath = filepath.Join(dir, "notation-ca.pem")
	if err := os.WriteFile(s.caPath, s.pki.CAPEM(), 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

// sign signs img (already seeded on the origin) in the format of kind and
// seeds the signature where that format puts it: cosign's signature tag
// for a key, a referrer of the image for a bundle or a Notation
// signature. The origin then serves it like a registry that was pushed
// to.
func (b *bench) sign(ctx context.Context, kind string, img image) error {
	subject := ocispec.Descriptor{MediaType: mediaManifest, Digest: digest.Digest(img.Digest),
		Size: int64(len(b.origin.manifestBytes(img.Digest)))}
	var (
		tag, mediaType string
		body           []byte
		blobs          [][]byte
	)
	err := fixtures(ctx, b.dir, func(tb testing.TB) {
		switch kind {
		case sigKey:
			ref := b.origin.URL[len("http://"):] + "/" + img.Repo
			layer := signaturetest.SignKey(tb, b.signers.key, signaturetest.Payload(ref, subject.Digest))
			a := signaturetest.SignatureManifest(tb, layer)
			tag, mediaType, body, blobs = signaturetest.LegacyTag(subject.Digest), a.MediaType, a.Manifest, a.Blobs
		case sigKeyless:
			bundle := b.signers.sigstore.BundleV3(tb, signaturetest.BundleOptions{
				Subject: subject.Digest, Identity: keylessSubject, Issuer: keylessIssuer})
			a := signaturetest.BundleArtifact(tb, subject, bundle, "")
			mediaType, body, blobs = a.MediaType, a.Manifest, a.Blobs
		case sigNotation:
			sig := b.signers.pki.Sign(tb, subject, "application/jose+json")
			body, _ = notationtest.Manifest(tb, sig)
			mediaType, blobs = ocispec.MediaTypeImageManifest, [][]byte{[]byte("{}"), sig.Envelope}
		default:
			tb.Fatalf("unknown signature kind %q", kind)
		}
	})
	if err != nil {
		return fmt.Errorf("sign %s:%s (%s): %w", img.Repo, img.Tag, kind, err)
	}
	_, err = b.seed.artifact(img.Repo, tag, mediaType, body, blobs)
	return err
}

// fixtures runs fn, which uses test fixtures, with a testing.TB that
// turns a fixture's failure into an error: the fixtures are written for
// tests, and this benchmark is a command.
func fixtures(ctx context.Context, dir string, fn func(testing.TB)) (err error) {
	defer func() {
		if v := recover(); v != nil {
			f, ok := v.(fixtureFailure)
			if !ok {
				panic(v)
			}
			err = f
		}
	}()
	fn(&fixtureTB{ctx: ctx, dir: dir})
	return nil
}

// fixtureFailure is a fixture's Fatal, carried to fixtures by panic.
type fixtureFailure struct{ msg string }

func (f fixtureFailure) Error() string { return f.msg }

// fixtureTB is the least of a testing.TB the fixtures call: Helper,
// Fatal, Fatalf, Context and TempDir, with Errorf and FailNow failing as
// Fatal does and Logf discarding. Any other method is not implemented and
// panics through the nil embedded interface, so a fixture that starts to
// need one fails loudly here.
type fixtureTB struct {
	testing.TB
	ctx context.Context
	dir string
}

func (*fixtureTB) Helper()                         {}
func (*fixtureTB) Name() string                    { return "bench" }
func (*fixtureTB) Fatal(args ...any)               { panic(fixtureFailure{fmt.Sprint(args...)}) }
func (*fixtureTB) Fatalf(format string, a ...any)  { panic(fixtureFailure{fmt.Sprintf(format, a...)}) }
func (*fixtureTB) Errorf(format string, a ...any)  { panic(fixtureFailure{fmt.Sprintf(format, a...)}) }
func (*fixtureTB) FailNow()                        { panic(fixtureFailure{"fixture failed"}) }
func (*fixtureTB) Logf(format string, args ...any) {}
func (t *fixtureTB) Context() context.Context      { return t.ctx }

// TempDir is a fresh directory under the run's directory, removed with it.
func (t *fixtureTB) TempDir() string {
	d, err := os.MkdirTemp(t.dir, "fixture-")
	if err != nil {
		panic(fixtureFailure{fmt.Sprintf("temporary directory: %v", err)})
	}
	return d
}
