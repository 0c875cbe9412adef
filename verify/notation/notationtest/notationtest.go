// Package notationtest makes real Notary Project signatures for tests: a
// CA and a code-signing certificate it issued, envelopes (JWS or COSE)
// signed with notation-go's own signer, and signature manifests pushed
// next to an image in an in-process registry, as `notation sign` pushes
// them, so that the referrers API lists them.
//
// Everything is generated in the test; nothing touches the network beyond
// the in-process registry on 127.0.0.1.
package notationtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	_ "github.com/notaryproject/notation-core-go/signature/cose" // registers the COSE envelope
	_ "github.com/notaryproject/notation-core-go/signature/jws"  // registers the JWS envelope
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/signer"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// PKI is a root CA and a code-signing certificate it issued, with their
// keys (ECDSA P-256, which Notation accepts).
type PKI struct {
	CA      *x509.Certificate
	CAKey   crypto.Signer
	Leaf    *x509.Certificate
	LeafKey crypto.Signer
}

// PKIOptions shapes the signing certificate. The zero value is a
// certificate valid from an hour ago for a day, for DefaultSubject.
type PKIOptions struct {
	// Subject is the signing certificate's subject; DefaultSubject() when
	// empty.
	Subject pkix.Name
	// NotBefore and NotAfter bound the signing certificate's validity;
	// an hour ago and a day from now when zero. Set both in the past for
	// an expired certificate, and sign with SignAt inside them.
	NotBefore, NotAfter time.Time
	// CAName is the CA's common name; "airlock test CA" when empty.
	CAName string
	// RevocationURL, when set, is written into the signing certificate as
	// its OCSP responder and CRL distribution point, so a test can watch
	// that verification never asks it.
	RevocationURL string
}

// DefaultSubject is the signing certificate's subject when PKIOptions
// names none; its identity is "x509.subject: CN=release,O=Airlock Test,ST=WA,C=US".
// Notation's trusted identities must name C, ST and O at least.
func DefaultSubject() pkix.Name {
	return pkix.Name{Country: []string{"US"}, Province: []string{"WA"}, Organization: []string{"Airlock Test"}, CommonName: "release"}
}

// NewPKI generates a root CA and a signing certificate with the
// code-signing extended key usage, as Notation requires.
func NewPKI(tb testing.TB, opts PKIOptions) *PKI {
	tb.Helper()
	now := time.Now()
	if opts.Subject.String() == "" {
		opts.Subject = DefaultSubject()
	}
	if opts.NotBefore.IsZero() {
		opts.NotBefore = now.Add(-time.Hour)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = now.Add(24 * time.Hour)
	}
	if opts.CAName == "" {
		opts.CAName = "airlock test CA"
	}
	p := &PKI{CAKey: newKey(tb), LeafKey: newKey(tb)}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{"Airlock Test"}, CommonName: opts.CAName},
		NotBefore:             now.Add(-365 * 24 * time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	p.CA = issue(tb, caTmpl, caTmpl, p.CAKey.Public(), p.CAKey)
	leafTmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               opts.Subject,
		NotBefore:             opts.NotBefore,
		NotAfter:              opts.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraintsValid: true,
	}
	if opts.RevocationURL != "" {
		leafTmpl.OCSPServer = []string{opts.RevocationURL + "/ocsp"}
		leafTmpl.CRLDistributionPoints = []string{opts.RevocationURL + "/crl"}
	}
	p.Leaf = issue(tb, leafTmpl, p.CA, p.LeafKey.Public(), p.CAKey)
	return p
}

// CAPEM is the CA certificate in PEM, the content of a trustStore file.
func (p *PKI) CAPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.CA.Raw})
}

// WriteCA writes CAPEM to a file in a temporary directory and returns its
// path, for a policy's notation.trustStore.
func (p *PKI) WriteCA(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "notation-ca.pem")
	if err := os.WriteFile(path, p.CAPEM(), 0o600); err != nil {
		tb.Fatalf("write CA: %v", err)
	}
	return path
}

// Identity is the signing certificate's trusted identity, as a policy's
// notation.trustedIdentities lists it.
func (p *PKI) Identity() string {
	return "x509.subject: " + p.Leaf.Subject.String()
}

// Signature is one signed envelope, as the layer of a signature manifest.
type Signature struct {
	// Envelope is the envelope's bytes and MediaType its media type
	// (application/jose+json or application/cose).
	Envelope  []byte
	MediaType string
	// Subject is the descriptor the envelope signs.
	Subject ocispec.Descriptor
	// CAPEM is the PEM of the CA the signing certificate chains to.
	CAPEM []byte
	// Chain is the certificate chain in the envelope, signing certificate
	// first.
	Chain []*x509.Certificate
}

// Sign signs subject with notation-go's signer, as `notation sign` does,
// into an envelope of mediaType (application/jose+json or
// application/cose).
func (p *PKI) Sign(tb testing.TB, subject ocispec.Descriptor, mediaType string) Signature {
	tb.Helper()
	chain := []*x509.Certificate{p.Leaf, p.CA}
	s, err := signer.NewGenericSigner(p.LeafKey, chain)
	if err != nil {
		tb.Fatalf("notation signer: %v", err)
	}
	env, _, err := s.Sign(tb.Context(), subject, notation.SignerSignOptions{SignatureMediaType: mediaType})
	if err != nil {
		tb.Fatalf("notation sign %s: %v", subject.Digest, err)
	}
	return Signature{Envelope: env, MediaType: mediaType, Subject: subject, CAPEM: p.CAPEM(), Chain: chain}
}

// SignOptions shape an envelope beyond what notation-go's signer offers.
type SignOptions struct {
	// At is the signing time; now when zero. notation-go's signer always
	// signs now: At in the past makes envelopes signed while a now-expired
	// certificate was valid.
	At time.Time
	// ValidFor sets the signature's expiry ValidFor after At; no expiry
	// when zero.
	ValidFor time.Duration
	// TSA, when set, countersigns the signature with an RFC 3161
	// timestamp.
	TSA *TSA
}

// SignWith signs subject as Sign does, with opts. The envelope is built
// the way notation-go's signer builds it, with notation-core-go.
func (p *PKI) SignWith(tb testing.TB, subject ocispec.Descriptor, mediaType string, opts SignOptions) Signature {
	tb.Helper()
	if opts.At.IsZero() {
		opts.At = time.Now()
	}
	chain := []*x509.Certificate{p.Leaf, p.CA}
	local, err := signature.NewLocalSigner(chain, p.LeafKey)
	if err != nil {
		tb.Fatalf("local signer: %v", err)
	}
	payload, err := json.Marshal(map[string]ocispec.Descriptor{"targetArtifact": {
		MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size, Annotations: subject.Annotations,
	}})
	if err != nil {
		tb.Fatalf("payload: %v", err)
	}
	envelope, err := signature.NewEnvelope(mediaType)
	if err != nil {
		tb.Fatalf("envelope %s: %v", mediaType, err)
	}
	req := &signature.SignRequest{
		Payload:       signature.Payload{ContentType: "application/vnd.cncf.notary.payload.v1+json", Content: payload},
		Signer:        local,
		SigningTime:   opts.At,
		SigningScheme: signature.SigningSchemeX509,
		SigningAgent:  "airlock-notationtest",
	}
	if opts.ValidFor != 0 {
		req.Expiry = opts.At.Add(opts.ValidFor)
	}
	if opts.TSA != nil {
		req.Timestamper, req.TSARootCAs = opts.TSA, opts.TSA.Roots()
	}
	env, err := envelope.Sign(req.WithContext(tb.Context()))
	if err != nil {
		tb.Fatalf("sign %s at %s: %v", subject.Digest, opts.At, err)
	}
	return Signature{Envelope: env, MediaType: mediaType, Subject: subject, CAPEM: p.CAPEM(), Chain: chain}
}

// Sign generates a PKI with the default options and signs subject with
// it: the shortest way to a valid signature and its CA.
func Sign(tb testing.TB, subject ocispec.Descriptor, mediaType string) (Signature, *PKI) {
	tb.Helper()
	p := NewPKI(tb, PKIOptions{})
	return p.Sign(tb, subject, mediaType), p
}

func newKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("generate key: %v", err)
	}
	return k
}

func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		tb.Fatalf("serial: %v", err)
	}
	return n
}

func issue(tb testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	tb.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		tb.Fatalf("create certificate %s: %v", tmpl.Subject, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("parse certificate %s: %v", tmpl.Subject, err)
	}
	return c
}
