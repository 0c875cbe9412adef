package signature

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	sigsig "github.com/sigstore/sigstore/pkg/signature"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Options are what a Verifier needs beside its policy's settings.
type Options struct {
	// Now is the clock evidence is stamped with; time.Now when nil.
	// Certificates are checked at the time the transparency log or a
	// timestamp authority saw the signature, never at Now.
	Now func() time.Time
	// Logger receives why each signature was refused, at debug level;
	// slog.Default's handler is not used: nil discards.
	Logger *slog.Logger
	// Notation checks Notary Project signatures. It must be set when the
	// policy configures notation.
	Notation NotationVerifier
}

// NotationVerifier checks one Notary Project signature envelope against
// the policy's trust store and identities. verify/notation implements it.
// Without one, Notation signatures are not checked: New refuses a policy
// that configures notation.
type NotationVerifier interface {
	// Verify returns the identity that signed subject, or why the
	// envelope does not verify.
	Verify(ctx context.Context, envelope []byte, envelopeMediaType string, subject ocispec.Descriptor) (identity string, err error)
}

// Verifier checks images against one policy's signature settings. Its
// trust material is read once, by New; a changed key or trusted root
// needs a new Verifier (and changes Hash). It is safe for concurrent use.
type Verifier struct {
	policy     string
	cfg        config.Signature
	keys       []trustedKey
	root       *root.TrustedRoot
	identities []sgverify.CertificateIdentity
	notation   NotationVerifier
	hash       string
	now        func() time.Time
	log        *slog.Logger
}

// trustedKey is one configured public key.
type trustedKey struct {
	path     string
	id       string // "sha256:" + hex of the PKIX DER, the key's fingerprint
	public   crypto.PublicKey
	verifier sigsig.Verifier
}

// New reads policy's trust material through read (keys, trusted root,
// Notation trust stores) and returns a Verifier for it. It fails when a
// file cannot be read or parsed, naming the file, or when the policy
// configures notation and o.Notation is nil.
func New(policy string, cfg config.Signature, read func(path string) ([]byte, error), o Options) (*Verifier, error) {
	if cfg.MaxSignatures <= 0 {
		cfg.MaxSignatures = config.DefaultMaxSignatures
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = config.DefaultMaxSignatureSize
	}
	v := &Verifier{policy: policy, cfg: cfg, notation: o.Notation, now: o.Now, log: o.Logger}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Notation != nil && o.Notation == nil {
		return nil, fmt.Errorf("policy %s: notation is configured but this airlock has no Notation verifier", policy)
	}

	h := sha256.New()
	settings, err := json.Marshal(struct {
		Policy string
		Cfg    config.Signature
	}{policy, cfg})
	if err != nil {
		return nil, fmt.Errorf("policy %s: encoding signature settings: %w", policy, err)
	}
	material := func(path string) ([]byte, error) {
		b, err := read(path)
		if err != nil {
			return nil, fmt.Errorf("policy %s: reading %s: %w", policy, path, err)
		}
		// Length-prefix every part so that no two different inputs hash alike.
		for _, part := range [][]byte{[]byte(path), b} {
			_ = binary.Write(h, binary.BigEndian, uint64(len(part)))
			h.Write(part)
		}
		return b, nil
	}
	_ = binary.Write(h, binary.BigEndian, uint64(len(settings)))
	h.Write(settings)

	for _, path := range cfg.Keys {
		b, err := material(path)
		if err != nil {
			return nil, err
		}
		k, err := parseKey(path, b)
		if err != nil {
			return nil, fmt.Errorf("policy %s: %w", policy, err)
		}
		v.keys = append(v.keys, k)
	}
	if cfg.TrustedRoot != "" {
		b, err := material(cfg.TrustedRoot)
		if err != nil {
			return nil, err
		}
		if v.root, err = root.NewTrustedRootFromJSON(b); err != nil {
			return nil, fmt.Errorf("policy %s: %s is not a Sigstore trusted root (trusted_root.json): %w", policy, cfg.TrustedRoot, err)
		}
	}
	if len(cfg.Keyless) > 0 && v.root == nil {
		return nil, fmt.Errorf("policy %s: keyless identities need trustedRoot", policy)
	}
	if cfg.Timestamps > 0 && v.root == nil {
		return nil, fmt.Errorf("policy %s: timestamps needs trustedRoot, whose timestamp authorities check them", policy)
	}
	if cfg.TransparencyLog > 0 && v.root == nil {
		return nil, fmt.Errorf("policy %s: transparencyLog needs trustedRoot, whose Rekor keys check the log entries", policy)
	}
	for i, id := range cfg.Keyless {
		ci, err := sgverify.NewShortCertificateIdentity(id.Issuer, id.IssuerRegExp, id.Subject, id.SubjectRegExp)
		if err != nil {
			return nil, fmt.Errorf("policy %s: keyless[%d]: %w", policy, i, err)
		}
		v.identities = append(v.identities, ci)
	}
	if cfg.Notation != nil {
		// The Notation verifier reads these itself; they are read here so
		// that a changed trust store changes Hash.
		for _, path := range append(append([]string{}, cfg.Notation.TrustStore...), cfg.Notation.TimestampStore...) {
			if _, err := material(path); err != nil {
				return nil, err
			}
		}
	}
	v.hash = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return v, nil
}

// parseKey reads a PEM public key (PKIX: ECDSA, RSA or Ed25519).
func parseKey(path string, pemBytes []byte) (trustedKey, error) {
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		return trustedKey{}, fmt.Errorf("%s is not a PEM public key: %w", path, err)
	}
	// cosign signs the payload's SHA-256 with ECDSA and RSA (PKCS #1
	// v1.5), and the payload itself with Ed25519.
	ver, err := sigsig.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return trustedKey{}, fmt.Errorf("%s: unsupported public key: %w", path, err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return trustedKey{}, fmt.Errorf("%s: %w", path, err)
	}
	sum := sha256.Sum256(der)
	return trustedKey{path: path, id: "sha256:" + hex.EncodeToString(sum[:]), public: pub, verifier: ver}, nil
}

// Hash identifies the settings and the trust material the Verifier was
// built from: it changes when a key, the trusted root, a trust store or
// a setting changes, so evidence recorded under another hash is stale.
func (v *Verifier) Hash() string { return v.hash }

// Verify looks for d's signatures through f and checks them against the
// policy. It returns evidence whenever it could decide, verified or not;
// it returns an error only when it could not: the registry failed for a
// reason other than an absent artifact, or ctx ended. mediaType is d's
// manifest media type.
func (v *Verifier) Verify(ctx context.Context, f Fetcher, d digest.Digest, mediaType string) (metadata.SignatureEvidence, error) {
	if err := d.Validate(); err != nil {
		return metadata.SignatureEvidence{}, fmt.Errorf("verifying signatures of %q: %w", d, err)
	}
	s := &session{v: v, f: f, subject: d, subjectType: mediaType, budget: int64(v.cfg.MaxBytes)}
	if err := s.run(ctx); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
			err = fmt.Errorf("%w (%w)", err, ctxErr)
		}
		return metadata.SignatureEvidence{}, fmt.Errorf("verifying signatures of %s: %w", d, err)
	}
	return s.evidence(), nil
}
