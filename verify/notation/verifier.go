package notation

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/notaryproject/notation-core-go/signature"
	"github.com/notaryproject/notation-core-go/signature/cose"
	"github.com/notaryproject/notation-core-go/signature/jws"
	"github.com/notaryproject/notation-go"
	"github.com/notaryproject/notation-go/verifier"
	"github.com/notaryproject/notation-go/verifier/trustpolicy"
	"github.com/notaryproject/notation-go/verifier/truststore"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/config"
)

// Envelope media types: the layer media type of a Notation signature
// artifact.
const (
	MediaTypeJWS  = jws.MediaTypeEnvelope  // application/jose+json
	MediaTypeCOSE = cose.MediaTypeEnvelope // application/cose
)

// ArtifactType is the artifactType of a Notation signature manifest, as
// listed by the referrers API.
const ArtifactType = "application/vnd.cncf.notary.signature"

// Verifier checks Notation signature envelopes against one policy's trust
// stores and trusted identities.
type Verifier struct {
	inner notation.Verifier
}

// Option configures a Verifier.
type Option func(*options)

type options struct{ log *slog.Logger }

// WithLogger makes New say on log that revocation is not checked. Without
// it nothing is logged.
func WithLogger(log *slog.Logger) Option {
	return func(o *options) { o.log = log }
}

// New reads the trust stores of cfg through read (os.ReadFile in
// production) and builds the verifier. It fails, naming the file or the
// identity, when a trust store file holds no usable CA certificate or a
// trusted identity is not "*" or a valid "x509.subject: ..." string.
func New(cfg config.NotationTrust, read func(path string) ([]byte, error), opts ...Option) (*Verifier, error) {
	o := options{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, opt := range opts {
		opt(&o)
	}
	if len(cfg.TrustStore) == 0 {
		return nil, errors.New("the Notation trust store is empty: list the PEM CA certificates signatures must chain to")
	}
	if len(cfg.TrustedIdentities) == 0 {
		return nil, errors.New(`the Notation trusted identities are empty: list "x509.subject: ..." strings, or "*"`)
	}
	store := memoryTrustStore{}
	var err error
	if store[truststore.TypeCA], err = loadStore(truststore.TypeCA, cfg.TrustStore, read); err != nil {
		return nil, err
	}
	if store[truststore.TypeTSA], err = loadStore(truststore.TypeTSA, cfg.TimestampStore, read); err != nil {
		return nil, err
	}
	doc := trustPolicy(cfg)
	inner, err := verifier.NewWithOptions(doc, store, nil, verifier.VerifierOptions{
		RevocationCodeSigningValidator:  offlineRevocation{},
		RevocationTimestampingValidator: offlineRevocation{},
	})
	if err != nil {
		return nil, fmt.Errorf("the Notation trust policy is not valid: %w", err)
	}
	o.log.Info("Notation certificate revocation is not checked: verification is offline, and OCSP and CRL need the network",
		"trustStore", cfg.TrustStore, "trustedIdentities", cfg.TrustedIdentities)
	return &Verifier{inner: inner}, nil
}

// Verify checks one envelope (the signature manifest's layer bytes, media
// type application/jose+json or application/cose) against the trust store
// and identities, and that it signs exactly subject (digest, size, media
// type). It returns the signing certificate's subject as the identity that
// verified.
//
// subject is the manifest as served: its digest, its size in bytes and the
// media type it is served with (a Docker manifest's media type for a
// Docker image), since Notation signs all three. Bounding the size of
// envelope is the caller's business; Verify reads it whole.
func (v *Verifier) Verify(ctx context.Context, envelope []byte, envelopeMediaType string, subject ocispec.Descriptor) (string, error) {
	if envelopeMediaType != MediaTypeJWS && envelopeMediaType != MediaTypeCOSE {
		return "", fmt.Errorf("the Notation signature has media type %q; Notation envelopes are %s or %s", envelopeMediaType, MediaTypeJWS, MediaTypeCOSE)
	}
	outcome, err := v.inner.Verify(ctx, subject, envelope, notation.VerifierVerifyOptions{
		// Any full reference selects the one "*" statement; the digest is
		// the subject's so that notation's logs name it.
		ArtifactReference:  "airlock.local/image@" + subject.Digest.String(),
		SignatureMediaType: envelopeMediaType,
	})
	if err == nil {
		return leafSubject(outcome), nil
	}
	return "", explain(outcome, err, envelopeMediaType, subject)
}

// leafSubject is the signing certificate's subject, as notation compares
// it with the trusted identities.
func leafSubject(o *notation.VerificationOutcome) string {
	if o == nil || o.EnvelopeContent == nil || len(o.EnvelopeContent.SignerInfo.CertificateChain) == 0 {
		return ""
	}
	return o.EnvelopeContent.SignerInfo.CertificateChain[0].Subject.String()
}

// explain turns notation's failure into a sentence that says which check
// failed, keeping notation's error for the details.
func explain(o *notation.VerificationOutcome, err error, mediaType string, subject ocispec.Descriptor) error {
	if o == nil {
		return fmt.Errorf("the Notation signature could not be verified: %w", err)
	}
	var failed *notation.ValidationResult
	for _, r := range o.VerificationResults {
		if r.Error != nil && r.Action == trustpolicy.ActionEnforce {
			failed = r
		}
	}
	if failed == nil {
		// Every check passed but the last: the payload names another
		// artifact.
		return mismatch(o, err, subject)
	}
	who := leafSubject(o)
	switch failed.Type {
	case trustpolicy.TypeIntegrity:
		var parse *signature.InvalidSignatureError
		if errors.As(failed.Error, &parse) || strings.HasPrefix(failed.Error.Error(), "unable to parse") {
			return fmt.Errorf("the Notation signature is not a valid %s envelope: %w", mediaType, failed.Error)
		}
		return fmt.Errorf("the Notation signature does not verify: its envelope was altered after signing or is not signed by its certificate (%w)", failed.Error)
	case trustpolicy.TypeAuthenticity:
		var chain *signature.SignatureAuthenticityError
		var inconclusive notation.ErrorVerificationInconclusive
		if errors.As(failed.Error, &chain) || errors.As(failed.Error, &inconclusive) {
			return fmt.Errorf("the Notation signature does not chain to the policy's trust store: it is by %s, whose chain ends at %s (%w)", who, chainEnd(o), failed.Error)
		}
		return fmt.Errorf("the Notation signature is by %s, not an identity the policy trusts (%w)", who, failed.Error)
	case trustpolicy.TypeExpiry:
		return fmt.Errorf("the Notation signature has expired: %w", failed.Error)
	case trustpolicy.TypeAuthenticTimestamp:
		if c := expired(o); c != nil {
			return fmt.Errorf("the Notation signature's certificate %s expired on %s, and no trusted timestamp shows it signed while valid (%w)",
				c.Subject, c.NotAfter.UTC().Format(time.RFC3339), failed.Error)
		}
		// notation's errors are plain strings here; its wording picks the
		// sentence, and anything else falls through to the general one.
		switch msg := failed.Error.Error(); {
		case strings.Contains(msg, "no timestamp countersignature"):
			return fmt.Errorf("the Notation signature carries no timestamp, which the policy requires since it lists a timestampStore (%w)", failed.Error)
		case strings.Contains(msg, "failed to verify the timestamp countersignature"):
			return fmt.Errorf("the Notation signature's timestamp does not chain to the policy's timestampStore (%w)", failed.Error)
		}
		return fmt.Errorf("the Notation signature's signing time or timestamp is not trusted: %w", failed.Error)
	}
	return fmt.Errorf("the Notation signature fails its %s check: %w", failed.Type, failed.Error)
}

// mismatch says which artifact the payload names instead of subject.
func mismatch(o *notation.VerificationOutcome, err error, subject ocispec.Descriptor) error {
	var payload struct {
		TargetArtifact ocispec.Descriptor `json:"targetArtifact"`
	}
	if o.EnvelopeContent == nil || json.Unmarshal(o.EnvelopeContent.Payload.Content, &payload) != nil {
		return fmt.Errorf("the Notation signature could not be verified: %w", err)
	}
	got := payload.TargetArtifact
	if got.Digest != subject.Digest {
		return fmt.Errorf("the Notation signature signs %s, not this image (%s)", got.Digest, subject.Digest)
	}
	return fmt.Errorf("the Notation signature signs %s as %d bytes of %s, not %d bytes of %s as served",
		got.Digest, got.Size, got.MediaType, subject.Size, subject.MediaType)
}

// chainEnd is the issuer of the last certificate of the signature's chain:
// the CA the trust store would need to hold.
func chainEnd(o *notation.VerificationOutcome) string {
	if o.EnvelopeContent == nil || len(o.EnvelopeContent.SignerInfo.CertificateChain) == 0 {
		return "an unknown CA"
	}
	chain := o.EnvelopeContent.SignerInfo.CertificateChain
	return chain[len(chain)-1].Issuer.String()
}

// expired is the first certificate of the signature's chain that is not
// valid now, or nil.
func expired(o *notation.VerificationOutcome) *x509.Certificate {
	if o.EnvelopeContent == nil {
		return nil
	}
	now := time.Now()
	for _, c := range o.EnvelopeContent.SignerInfo.CertificateChain {
		if now.After(c.NotAfter) {
			return c
		}
	}
	return nil
}
