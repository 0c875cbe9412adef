package signature_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/verify/notation"
	"github.com/airlock-registry/airlock/verify/notation/notationtest"
	"github.com/airlock-registry/airlock/verify/signature"
	st "github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

// TestNotationReal checks Notary Project signatures end to end: pushed as
// `notation sign` pushes them, found among the referrers, and checked by
// verify/notation against the policy's trust store and identities.
func TestNotationReal(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		identity func(p *notationtest.PKI) string
		verified bool
		message  string
	}{
		{"trusted identity", func(p *notationtest.PKI) string { return p.Identity() }, true, "Notation signature by CN=release"},
		{"any identity", func(*notationtest.PKI) string { return "*" }, true, "Notation signature by CN=release"},
		{"other identity", func(*notationtest.PKI) string { return "x509.subject: C=US, ST=WA, O=Someone Else" }, false,
			"1 signature found, not verified: it is a Notation signature that does not verify"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			sig, pki := notationtest.Sign(t, e.subject, notation.MediaTypeJWS)
			notationtest.Push(t, e.u, repo, sig)
			trust := config.NotationTrust{TrustStore: []string{pki.WriteCA(t)}, TrustedIdentities: []string{tc.identity(pki)}}
			nv, err := notation.New(trust, os.ReadFile)
			if err != nil {
				t.Fatal(err)
			}
			v := newVerifier(t, config.Signature{Notation: &trust}, signature.Options{Notation: nv})
			ev, err := v.Verify(t.Context(), e.fetcher, e.d, e.subject.MediaType)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("evidence: %+v", ev)
			if ev.Verified != tc.verified || !strings.Contains(ev.Message, tc.message) || ev.Examined != 1 {
				t.Fatalf("evidence %+v, want verified=%v and a message containing %q", ev, tc.verified, tc.message)
			}
			if want := pki.Leaf.Subject.String(); tc.verified && (ev.Kind != "notation" || ev.Identity != want) {
				t.Fatalf("evidence %+v, want kind notation by %s", ev, want)
			}
		})
	}
}

// imageWithheld is a Fetcher that refuses the image's own manifest, as
// airlock's fetcher does while the gate is deciding that image: it serves
// only signature artifacts then.
type imageWithheld struct {
	*st.Fetcher
	image digest.Digest
}

func (f imageWithheld) Manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	if ref == f.image.String() {
		return nil, "", "", fmt.Errorf("GET manifests/%s: 403 %s is not a signature artifact", ref, ref)
	}
	return f.Fetcher.Manifest(ctx, ref)
}

// TestNotationWithoutReadingTheImage checks that a Notation signature
// verifies without reading the image's manifest (its size is the
// signature manifest's subject's), and that a subject with another size
// is refused, not trusted.
func TestNotationWithoutReadingTheImage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		size     func(int64) int64
		verified bool
		message  string
	}{
		{"subject as signed", func(n int64) int64 { return n }, true, "Notation signature by CN=release"},
		{"subject with another size", func(n int64) int64 { return n + 1 }, false,
			"1 signature found, not verified: it is a Notation signature that does not verify"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			sig, pki := notationtest.Sign(t, e.subject, notation.MediaTypeJWS)
			sig.Subject.Size = tc.size(sig.Subject.Size) // the manifest's subject; the envelope keeps the signed one
			notationtest.Push(t, e.u, repo, sig)
			trust := config.NotationTrust{TrustStore: []string{pki.WriteCA(t)}, TrustedIdentities: []string{pki.Identity()}}
			nv, err := notation.New(trust, os.ReadFile)
			if err != nil {
				t.Fatal(err)
			}
			v := newVerifier(t, config.Signature{Notation: &trust}, signature.Options{Notation: nv})
			ev, err := v.Verify(t.Context(), imageWithheld{e.fetcher, e.d}, e.d, e.subject.MediaType)
			if err != nil {
				t.Fatalf("Verify with the image withheld: %v", err)
			}
			if ev.Verified != tc.verified || !strings.Contains(ev.Message, tc.message) {
				t.Fatalf("evidence %+v, want verified=%v and a message containing %q", ev, tc.verified, tc.message)
			}
		})
	}
}
