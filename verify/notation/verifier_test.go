package notation_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/verify/notation"
	"github.com/airlock-registry/airlock/verify/notation/notationtest"
)

// image is the descriptor the signatures are checked against.
var image = ocispec.Descriptor{
	MediaType: ocispec.MediaTypeImageManifest,
	Digest:    digest.FromString("the image's manifest"),
	Size:      1234,
}

// writeFile writes b into dir and returns its path, so that trust stores
// are read from disk through os.ReadFile as in production.
func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVerify(t *testing.T) {
	t.Parallel()
	signer := notationtest.NewPKI(t, notationtest.PKIOptions{})
	other := notationtest.NewPKI(t, notationtest.PKIOptions{CAName: "another CA"})
	now := time.Now()
	expiredPKI := notationtest.NewPKI(t, notationtest.PKIOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})

	tsa, otherTSA := notationtest.NewTSA(t), notationtest.NewTSA(t)
	pastTSA := notationtest.NewTSA(t)
	pastTSA.At = now.Add(-36 * time.Hour)

	dir := t.TempDir()
	signerCA := writeFile(t, dir, "signer-ca.pem", signer.CAPEM())
	tsaRoot := writeFile(t, dir, "tsa.pem", tsa.RootPEM())
	pastTSARoot := writeFile(t, dir, "past-tsa.pem", pastTSA.RootPEM())
	otherTSARoot := writeFile(t, dir, "other-tsa.pem", otherTSA.RootPEM())
	otherCA := writeFile(t, dir, "other-ca.pem", other.CAPEM())
	expiredCA := writeFile(t, dir, "expired-ca.pem", expiredPKI.CAPEM())
	wantID := "CN=release,O=Airlock Test,ST=WA,C=US"

	anotherImage := image
	anotherImage.Digest = digest.FromString("another image")
	resized := image
	resized.Size = 99

	cases := []struct {
		name       string
		sig        notationtest.Signature
		mediaType  string // the envelope's media type when not sig's
		trustStore []string
		tsaStore   []string
		identities []string
		envelope   func([]byte) []byte
		wantErr    string
	}{
		{name: "valid JWS", sig: signer.Sign(t, image, notation.MediaTypeJWS), trustStore: []string{signerCA}, identities: []string{signer.Identity()}},
		{name: "valid COSE", sig: signer.Sign(t, image, notation.MediaTypeCOSE), trustStore: []string{signerCA}, identities: []string{signer.Identity()}},
		{name: "any identity", sig: signer.Sign(t, image, notation.MediaTypeJWS), trustStore: []string{signerCA}, identities: []string{"*"}},
		{name: "identity by a subset of the subject", sig: signer.Sign(t, image, notation.MediaTypeCOSE), trustStore: []string{signerCA}, identities: []string{"x509.subject: C=US, ST=WA, O=Airlock Test"}},
		{name: "one of two trust store certificates", sig: signer.Sign(t, image, notation.MediaTypeJWS), trustStore: []string{otherCA, signerCA}, identities: []string{"*"}},
		{
			name: "wrong identity", sig: signer.Sign(t, image, notation.MediaTypeJWS),
			trustStore: []string{signerCA}, identities: []string{"x509.subject: C=US, ST=WA, O=Airlock Test, CN=someone else"},
			wantErr: "the Notation signature is by " + wantID + ", not an identity the policy trusts",
		},
		{
			name: "wrong identity COSE", sig: signer.Sign(t, image, notation.MediaTypeCOSE),
			trustStore: []string{signerCA}, identities: []string{"x509.subject: C=US, ST=WA, O=Other Org"},
			wantErr: "the Notation signature is by " + wantID + ", not an identity the policy trusts",
		},
		{
			name: "another CA", sig: signer.Sign(t, image, notation.MediaTypeJWS),
			trustStore: []string{otherCA}, identities: []string{"*"},
			wantErr: "the Notation signature does not chain to the policy's trust store: it is by " + wantID + ", whose chain ends at CN=airlock test CA,O=Airlock Test",
		},
		{
			name: "another CA COSE", sig: signer.Sign(t, image, notation.MediaTypeCOSE),
			trustStore: []string{otherCA}, identities: []string{signer.Identity()},
			wantErr: "the Notation signature does not chain to the policy's trust store",
		},
		{
			name: "signs another image", sig: signer.Sign(t, anotherImage, notation.MediaTypeJWS),
			trustStore: []string{signerCA}, identities: []string{signer.Identity()},
			wantErr: "the Notation signature signs " + anotherImage.Digest.String() + ", not this image (" + image.Digest.String() + ")",
		},
		{
			name: "signs another image COSE", sig: signer.Sign(t, anotherImage, notation.MediaTypeCOSE),
			trustStore: []string{signerCA}, identities: []string{"*"},
			wantErr: "the Notation signature signs " + anotherImage.Digest.String() + ", not this image",
		},
		{
			name: "signs another size", sig: signer.Sign(t, resized, notation.MediaTypeJWS),
			trustStore: []string{signerCA}, identities: []string{"*"},
			wantErr: "the Notation signature signs " + image.Digest.String() + " as 99 bytes of " + ocispec.MediaTypeImageManifest + ", not 1234 bytes",
		},
		{
			name: "tampered JWS", sig: signer.Sign(t, image, notation.MediaTypeJWS),
			trustStore: []string{signerCA}, identities: []string{"*"}, envelope: tamperJWS(t),
			wantErr: "the Notation signature does not verify: its envelope was altered after signing",
		},
		{
			name: "tampered COSE", sig: signer.Sign(t, image, notation.MediaTypeCOSE),
			trustStore: []string{signerCA}, identities: []string{"*"}, envelope: tamperLastByte,
			wantErr: "the Notation signature does not verify: its envelope was altered after signing",
		},
		{
			name: "expired certificate", sig: expiredPKI.SignWith(t, image, notation.MediaTypeJWS, notationtest.SignOptions{At: now.Add(-36 * time.Hour)}),
			trustStore: []string{expiredCA}, identities: []string{"*"},
			wantErr: "the Notation signature's certificate " + wantID + " expired on",
		},
		{
			name: "expired certificate COSE", sig: expiredPKI.SignWith(t, image, notation.MediaTypeCOSE, notationtest.SignOptions{At: now.Add(-36 * time.Hour)}),
			trustStore: []string{expiredCA}, identities: []string{expiredPKI.Identity()},
			wantErr: "and no trusted timestamp shows it signed while valid",
		},
		{
			name: "expired signature", sig: signer.SignWith(t, image, notation.MediaTypeJWS, notationtest.SignOptions{At: now.Add(-30 * time.Minute), ValidFor: 10 * time.Minute}),
			trustStore: []string{signerCA}, identities: []string{"*"},
			wantErr: "the Notation signature has expired: digital signature has expired on",
		},
		{
			name: "signature not yet expired", sig: signer.SignWith(t, image, notation.MediaTypeCOSE, notationtest.SignOptions{At: now.Add(-30 * time.Minute), ValidFor: time.Hour}),
			trustStore: []string{signerCA}, identities: []string{signer.Identity()},
		},
		{
			name: "timestamp required but absent", sig: signer.Sign(t, image, notation.MediaTypeJWS),
			trustStore: []string{signerCA}, tsaStore: []string{otherCA}, identities: []string{"*"},
			wantErr: "the Notation signature carries no timestamp, which the policy requires since it lists a timestampStore",
		},
		{
			name: "timestamped JWS", sig: signer.SignWith(t, image, notation.MediaTypeJWS, notationtest.SignOptions{TSA: tsa}),
			trustStore: []string{signerCA}, tsaStore: []string{tsaRoot}, identities: []string{signer.Identity()},
		},
		{
			name: "timestamped COSE", sig: signer.SignWith(t, image, notation.MediaTypeCOSE, notationtest.SignOptions{TSA: tsa}),
			trustStore: []string{signerCA}, tsaStore: []string{otherTSARoot, tsaRoot}, identities: []string{"*"},
		},
		{
			name: "timestamp outlives the certificate", sig: expiredPKI.SignWith(t, image, notation.MediaTypeJWS, notationtest.SignOptions{At: now.Add(-36 * time.Hour), TSA: pastTSA}),
			trustStore: []string{expiredCA}, tsaStore: []string{pastTSARoot}, identities: []string{expiredPKI.Identity()},
		},
		{
			name: "timestamp outlives the certificate COSE", sig: expiredPKI.SignWith(t, image, notation.MediaTypeCOSE, notationtest.SignOptions{At: now.Add(-36 * time.Hour), TSA: pastTSA}),
			trustStore: []string{expiredCA}, tsaStore: []string{pastTSARoot}, identities: []string{"*"},
		},
		{
			name: "timestamp of an untrusted TSA", sig: signer.SignWith(t, image, notation.MediaTypeJWS, notationtest.SignOptions{TSA: tsa}),
			trustStore: []string{signerCA}, tsaStore: []string{otherTSARoot}, identities: []string{"*"},
			wantErr: "the Notation signature's timestamp does not chain to the policy's timestampStore",
		},
		{
			name: "timestamp after the certificate expired", sig: expiredPKI.SignWith(t, image, notation.MediaTypeCOSE, notationtest.SignOptions{At: now.Add(-36 * time.Hour), TSA: tsa}),
			trustStore: []string{expiredCA}, tsaStore: []string{tsaRoot}, identities: []string{"*"},
			wantErr: "the Notation signature's certificate " + wantID + " expired on",
		},
		{
			name: "garbage JWS", sig: signer.Sign(t, image, notation.MediaTypeJWS),
			trustStore: []string{signerCA}, identities: []string{"*"}, envelope: garbage,
			wantErr: "the Notation signature is not a valid application/jose+json envelope",
		},
		{
			name: "garbage COSE", sig: signer.Sign(t, image, notation.MediaTypeCOSE),
			trustStore: []string{signerCA}, identities: []string{"*"}, envelope: garbage,
			wantErr: "the Notation signature is not a valid application/cose envelope",
		},
		{
			name: "JWS offered as COSE", sig: signer.Sign(t, image, notation.MediaTypeJWS), mediaType: notation.MediaTypeCOSE,
			trustStore: []string{signerCA}, identities: []string{"*"},
			wantErr: "the Notation signature is not a valid application/cose envelope",
		},
		{
			name: "not an envelope media type", sig: signer.Sign(t, image, notation.MediaTypeJWS), mediaType: "application/json",
			trustStore: []string{signerCA}, identities: []string{"*"},
			wantErr: `the Notation signature has media type "application/json"; Notation envelopes are application/jose+json or application/cose`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v, err := notation.New(config.NotationTrust{TrustStore: tc.trustStore, TimestampStore: tc.tsaStore, TrustedIdentities: tc.identities}, os.ReadFile)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			env, mt := tc.sig.Envelope, tc.sig.MediaType
			if tc.envelope != nil {
				env = tc.envelope(env)
			}
			if tc.mediaType != "" {
				mt = tc.mediaType
			}
			id, err := v.Verify(t.Context(), env, mt, image)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if id != wantID {
					t.Fatalf("identity %q, want %q", id, wantID)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify passed as %q, want an error containing %q", id, tc.wantErr)
			}
			t.Logf("refused: %v", err)
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Verify error\n  %v\nwant it to contain\n  %s", err, tc.wantErr)
			}
			if id != "" {
				t.Fatalf("identity %q returned with an error", id)
			}
		})
	}
}

// tamperJWS changes one character of the JWS's signature, leaving the
// envelope well formed.
func tamperJWS(t *testing.T) func([]byte) []byte {
	return func(b []byte) []byte {
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("JWS envelope: %v", err)
		}
		s := []byte(m["signature"].(string))
		if s[3] == 'A' {
			s[3] = 'B'
		} else {
			s[3] = 'A'
		}
		m["signature"] = string(s)
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
}

// tamperLastByte flips the last byte of a COSE_Sign1, which is within its
// signature.
func tamperLastByte(b []byte) []byte {
	out := append([]byte(nil), b...)
	out[len(out)-1] ^= 0x01
	return out
}

func garbage([]byte) []byte { return []byte("this is not a signature envelope") }

func TestNewRefusesBadTrust(t *testing.T) {
	t.Parallel()
	p := notationtest.NewPKI(t, notationtest.PKIOptions{})
	dir := t.TempDir()
	ca := writeFile(t, dir, "ca.pem", p.CAPEM())
	notPEM := writeFile(t, dir, "not.pem", []byte("hello"))
	key := writeFile(t, dir, "key.pem", []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	leaf := writeFile(t, dir, "leaf.pem", pemCert(p.Leaf.Raw))

	cases := []struct {
		name    string
		cfg     config.NotationTrust
		wantErr string
	}{
		{"missing file", config.NotationTrust{TrustStore: []string{filepath.Join(dir, "absent.pem")}, TrustedIdentities: []string{"*"}}, "read Notation ca certificate " + filepath.Join(dir, "absent.pem")},
		{"not PEM", config.NotationTrust{TrustStore: []string{notPEM}, TrustedIdentities: []string{"*"}}, "Notation ca certificate " + notPEM + ": holds data that is not PEM"},
		{"a key, not a certificate", config.NotationTrust{TrustStore: []string{key}, TrustedIdentities: []string{"*"}}, `holds a PEM "PUBLIC KEY" block`},
		{"a leaf, not a CA", config.NotationTrust{TrustStore: []string{leaf}, TrustedIdentities: []string{"*"}}, "is not a CA certificate"},
		{"timestamp root that is not a root", config.NotationTrust{TrustStore: []string{ca}, TimestampStore: []string{leaf}, TrustedIdentities: []string{"*"}}, "Notation tsa certificate " + leaf},
		{"no trust store", config.NotationTrust{TrustedIdentities: []string{"*"}}, "the Notation trust store is empty"},
		{"no identities", config.NotationTrust{TrustStore: []string{ca}}, "the Notation trusted identities are empty"},
		{"identity without prefix", config.NotationTrust{TrustStore: []string{ca}, TrustedIdentities: []string{"CN=release"}}, "the Notation trust policy is not valid"},
		// Notation demands C, ST and O in every x509.subject identity.
		{"identity without ST", config.NotationTrust{TrustStore: []string{ca}, TrustedIdentities: []string{"x509.subject: C=US, O=MetalLB, CN=release"}}, `has no mandatory RDN attribute for "ST"`},
		{"identity that is not a DN", config.NotationTrust{TrustStore: []string{ca}, TrustedIdentities: []string{"x509.subject: release"}}, "the Notation trust policy is not valid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := notation.New(tc.cfg, os.ReadFile)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestVerifyStaysOffline signs with a certificate that names an OCSP
// responder and a CRL distribution point on a loopback server, and checks
// that verification, passing or failing, never asks them.
func TestVerifyStaysOffline(t *testing.T) {
	t.Parallel()
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	p := notationtest.NewPKI(t, notationtest.PKIOptions{RevocationURL: srv.URL})
	if len(p.Leaf.OCSPServer) == 0 || len(p.Leaf.CRLDistributionPoints) == 0 {
		t.Fatal("the signing certificate names no revocation service")
	}
	ca := writeFile(t, t.TempDir(), "ca.pem", p.CAPEM())
	var logged bytes.Buffer
	v, err := notation.New(config.NotationTrust{TrustStore: []string{ca}, TimestampStore: []string{ca}, TrustedIdentities: []string{p.Identity()}}, os.ReadFile,
		notation.WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "Notation certificate revocation is not checked") {
		t.Fatalf("New did not log that revocation is not checked; logged %q", logged.String())
	}
	noTSA, err := notation.New(config.NotationTrust{TrustStore: []string{ca}, TrustedIdentities: []string{p.Identity()}}, os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, mt := range []string{notation.MediaTypeJWS, notation.MediaTypeCOSE} {
		sig := p.Sign(t, image, mt)
		if _, err := noTSA.Verify(t.Context(), sig.Envelope, mt, image); err != nil {
			t.Fatalf("%s: %v", mt, err)
		}
		// The timestamp store makes a timestamp mandatory: this one fails
		// after the chain and identity checks, where revocation would come.
		if _, err := v.Verify(t.Context(), sig.Envelope, mt, image); err == nil {
			t.Fatalf("%s: verified without the required timestamp", mt)
		}
	}
	if n := asked.Load(); n != 0 {
		t.Fatalf("verification made %d requests to the revocation service", n)
	}
}
