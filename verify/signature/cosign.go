package signature

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// simpleSigning is cosign's signed payload (the "simple signing" format
// from containers/image).
type simpleSigning struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
}

const simpleSigningType = "cosign container image signature"

// rekorBundle is cosign's dev.sigstore.cosign/bundle annotation: the
// Rekor entry and its signed entry timestamp.
type rekorBundle struct {
	SignedEntryTimestamp []byte `json:"SignedEntryTimestamp"`
	Payload              struct {
		Body           string `json:"body"`
		IntegratedTime int64  `json:"integratedTime"`
		LogIndex       int64  `json:"logIndex"`
		LogID          string `json:"logID"`
	} `json:"Payload"`
}

// rfc3161Annotation is cosign's dev.sigstore.cosign/rfc3161timestamp.
type rfc3161Annotation struct {
	SignedRFC3161Timestamp []byte `json:"SignedRFC3161Timestamp"`
}

// checkSimpleSigning checks one layer of a cosign signature manifest.
func (s *session) checkSimpleSigning(payload []byte, ann map[string]string) {
	sig, err := base64.StdEncoding.DecodeString(ann[annotationSignature])
	if err != nil || len(sig) == 0 {
		s.refuse("carries no signature (annotation %s)", annotationSignature)
		return
	}
	entries, err := legacyTlogEntries(ann[annotationBundle])
	if err != nil {
		s.refuse("has a Rekor bundle that cannot be read (%v)", err)
		return
	}
	timestamps, err := legacyTimestamps(ann[annotationTimestamp])
	if err != nil {
		s.refuse("has an RFC 3161 timestamp that cannot be read (%v)", err)
		return
	}
	sum := sha256.Sum256(payload)
	entity := &legacyEntity{
		sig:        bundle.NewMessageSignature(sum[:], "SHA2_256", sig),
		tlog:       entries,
		timestamps: timestamps,
	}
	if certPEM := ann[annotationCertificate]; certPEM != "" {
		s.checkLegacyKeyless(payload, entity, certPEM)
		return
	}
	s.checkLegacyKey(payload, sig, entity)
}

func (s *session) checkLegacyKey(payload, sig []byte, entity *legacyEntity) {
	if len(s.v.keys) == 0 {
		s.refuse("is signed with a key, and the policy trusts keyless identities only")
		return
	}
	var key *trustedKey
	for i := range s.v.keys {
		if s.v.keys[i].verifier.VerifySignature(bytes.NewReader(sig), bytes.NewReader(payload)) == nil {
			key = &s.v.keys[i]
			break
		}
	}
	if key == nil {
		s.refuse("is signed by a key the policy does not list")
		return
	}
	if !s.checkPayload(payload) {
		return
	}
	entity.key = key
	if err := s.checkKeyEvidence(entity); err != nil {
		s.refuse("is signed by key %s, but %v", short(key.id), err)
		return
	}
	s.accept(acceptance{kind: "key", keyID: key.id,
		message: fmt.Sprintf("signed by key %s (cosign signature)", key.id)})
}

// checkKeyEvidence checks the log entries and timestamps a key-based
// signature needs by policy.
func (s *session) checkKeyEvidence(entity sgverify.SignedEntity) error {
	tm := s.keyMaterial(entity)
	if n := s.v.cfg.TransparencyLog; n > 0 {
		if entries, _ := entity.TlogEntries(); len(entries) == 0 {
			return errors.New("it has no transparency-log entry, which the policy requires")
		}
		if _, err := sgverify.VerifyTlogEntry(entity, tm, n, true); err != nil {
			return fmt.Errorf("its transparency-log entry does not verify against the trusted root (%v)", err)
		}
	}
	if n := s.v.cfg.Timestamps; n > 0 {
		if _, err := sgverify.VerifySignedTimestampWithThreshold(entity, tm, n); err != nil {
			return fmt.Errorf("it lacks the %d verified RFC 3161 timestamps the policy requires (%v)", n, err)
		}
	}
	return nil
}

// keyMaterial is the trusted root (for log and timestamp keys) with the
// entity's key.
func (s *session) keyMaterial(entity sgverify.SignedEntity) root.TrustedMaterial {
	var tm root.TrustedMaterialCollection
	if s.v.root != nil {
		tm = append(tm, s.v.root)
	}
	if le, ok := entity.(*legacyEntity); ok && le.key != nil {
		tm = append(tm, keyMaterial(*le.key))
	}
	return tm
}

func keyMaterial(k trustedKey) root.TrustedMaterial {
	ek := root.NewExpiringKey(k.verifier, time.Time{}, time.Time{})
	return root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return ek, nil })
}

func (s *session) checkLegacyKeyless(payload []byte, entity *legacyEntity, certPEM string) {
	if len(s.v.identities) == 0 {
		s.refuse("is a keyless signature, and the policy trusts keys only")
		return
	}
	certs, err := cryptoutils.UnmarshalCertificatesFromPEM([]byte(certPEM))
	if err != nil || len(certs) == 0 {
		s.refuse("is a keyless signature whose certificate cannot be read")
		return
	}
	entity.cert = certs[0]
	who := certIdentity(certs[0])
	if len(entity.tlog) == 0 {
		s.refuse("is a keyless signature by %s without a Rekor bundle, which cannot be checked offline", who)
		return
	}
	res, ok := s.verifyKeyless(entity, sgverify.WithArtifact(bytes.NewReader(payload)), who)
	if !ok {
		return
	}
	if !s.checkPayload(payload) {
		return
	}
	s.accept(s.keylessAcceptance(res, certs[0], "cosign keyless signature"))
}

// verifyKeyless checks a certificate-signed entity against the trusted
// root and the policy's identities, refusing it with the reason when it
// fails.
func (s *session) verifyKeyless(entity sgverify.SignedEntity, artifact sgverify.ArtifactPolicyOption, who string) (*sgverify.VerificationResult, bool) {
	opts := []sgverify.VerifierOption{
		sgverify.WithTransparencyLog(atLeastOne(s.v.cfg.TransparencyLog)),
		sgverify.WithObserverTimestamps(1),
		sgverify.WithSignedCertificateTimestamps(atLeastOne(s.v.cfg.CertificateTransparency)),
	}
	if n := s.v.cfg.Timestamps; n > 0 {
		opts = append(opts, sgverify.WithSignedTimestamps(n))
	}
	verifier, err := sgverify.NewVerifier(s.v.root, opts...)
	if err != nil {
		s.refuse("could not be checked (%v)", err)
		return nil, false
	}
	policy := []sgverify.PolicyOption{}
	for _, id := range s.v.identities {
		policy = append(policy, sgverify.WithCertificateIdentity(id))
	}
	res, err := verifier.Verify(entity, sgverify.NewPolicy(artifact, policy...))
	if err != nil {
		s.refuse("%s", keylessReason(err, who))
		return nil, false
	}
	return res, true
}

// keylessReason turns sigstore-go's error into a clause.
func keylessReason(err error, who string) string {
	var idErr *sgverify.ErrNoMatchingCertificateIdentity
	msg := err.Error()
	switch {
	case errors.As(err, &idErr):
		return fmt.Sprintf("is a keyless signature by %s, not an identity the policy trusts", who)
	case strings.Contains(msg, "failed to verify log inclusion"):
		return fmt.Sprintf("is a keyless signature by %s whose transparency-log entry does not verify against the trusted root (%v)", who, err)
	case strings.Contains(msg, "failed to verify leaf certificate"):
		return fmt.Sprintf("is a keyless signature by %s whose certificate does not chain to the trusted root's Fulcio CAs at signing time", who)
	case strings.Contains(msg, "signed certificate timestamp"):
		return fmt.Sprintf("is a keyless signature by %s whose certificate lacks a verified certificate-transparency timestamp (%v)", who, err)
	case strings.Contains(msg, "failed to verify timestamps"):
		return fmt.Sprintf("is a keyless signature by %s without the verified timestamps the policy requires (%v)", who, err)
	case strings.Contains(msg, "failed to verify signature"):
		return fmt.Sprintf("is a keyless signature by %s that does not match what it signs (%v)", who, err)
	}
	return fmt.Sprintf("is a keyless signature by %s that does not verify (%v)", who, err)
}

func (s *session) keylessAcceptance(res *sgverify.VerificationResult, cert *x509.Certificate, what string) acceptance {
	sum := sha256.Sum256(cert.Raw)
	identity := certIdentity(cert)
	if res != nil && res.Signature != nil && res.Signature.Certificate != nil {
		c := res.Signature.Certificate
		identity = c.SubjectAlternativeName
		if c.Issuer != "" {
			identity += " (issuer " + c.Issuer + ")"
		}
	}
	return acceptance{kind: "keyless", keyID: "sha256:" + hex.EncodeToString(sum[:]), identity: identity,
		message: fmt.Sprintf("%s by %s", what, identity)}
}

// certIdentity names a Fulcio certificate's subject and issuer for
// messages.
func certIdentity(cert *x509.Certificate) string {
	sum, err := certificate.SummarizeCertificate(cert)
	if err != nil || sum.SubjectAlternativeName == "" {
		return "an unreadable identity"
	}
	if sum.Issuer == "" {
		return sum.SubjectAlternativeName
	}
	return sum.SubjectAlternativeName + " (issuer " + sum.Issuer + ")"
}

// checkPayload checks that a verified simple-signing payload is a
// signature of exactly the subject digest. The docker-reference is not
// compared: airlock serves images under its own names, and the digest
// pins the content whatever the name.
func (s *session) checkPayload(payload []byte) bool {
	var p simpleSigning
	if err := json.Unmarshal(payload, &p); err != nil {
		s.refuse("has a payload that is not a cosign signature payload (%v)", err)
		return false
	}
	if !strings.EqualFold(p.Critical.Type, simpleSigningType) {
		s.refuse("has a payload of type %q, not a cosign container image signature", p.Critical.Type)
		return false
	}
	if got := digest.Digest(p.Critical.Image.DockerManifestDigest); got != s.subject {
		s.refuse("names another image (%s)", got)
		return false
	}
	return true
}

func atLeastOne(n int) int {
	if n < 1 {
		return 1
	}
	return n
}

// short abbreviates a "sha256:<hex>" identifier for messages.
func short(id string) string {
	if len(id) > len("sha256:")+12 {
		return id[:len("sha256:")+12] + "…"
	}
	return id
}

// legacyTlogEntries reads cosign's Rekor bundle annotation.
func legacyTlogEntries(annotation string) ([]*tlog.Entry, error) {
	if annotation == "" {
		return nil, nil
	}
	var rb rekorBundle
	if err := json.Unmarshal([]byte(annotation), &rb); err != nil {
		return nil, err
	}
	body, err := base64.StdEncoding.DecodeString(rb.Payload.Body)
	if err != nil {
		return nil, fmt.Errorf("entry body: %w", err)
	}
	logID, err := hex.DecodeString(rb.Payload.LogID)
	if err != nil {
		return nil, fmt.Errorf("log ID: %w", err)
	}
	e, err := tlog.NewEntry(body, rb.Payload.IntegratedTime, rb.Payload.LogIndex, logID, rb.SignedEntryTimestamp, nil)
	if err != nil {
		return nil, err
	}
	return []*tlog.Entry{e}, nil
}

func legacyTimestamps(annotation string) ([][]byte, error) {
	if annotation == "" {
		return nil, nil
	}
	var ts rfc3161Annotation
	if err := json.Unmarshal([]byte(annotation), &ts); err != nil {
		return nil, err
	}
	return [][]byte{ts.SignedRFC3161Timestamp}, nil
}

// legacyEntity presents a cosign tag-scheme signature to sigstore-go as
// a v0.1 bundle would: a message signature over the payload, the
// certificate or key, the Rekor entry with its promise, and timestamps.
type legacyEntity struct {
	sig        sgverify.SignatureContent
	cert       *x509.Certificate
	key        *trustedKey
	tlog       []*tlog.Entry
	timestamps [][]byte
}

var _ sgverify.SignedEntity = (*legacyEntity)(nil)

func (e *legacyEntity) HasInclusionPromise() bool { return len(e.tlog) > 0 }
func (e *legacyEntity) HasInclusionProof() bool   { return false }
func (e *legacyEntity) Version() (string, error)  { return "v0.1", nil }
func (e *legacyEntity) Timestamps() ([][]byte, error) {
	return e.timestamps, nil
}
func (e *legacyEntity) TlogEntries() ([]*tlog.Entry, error) { return e.tlog, nil }
func (e *legacyEntity) SignatureContent() (sgverify.SignatureContent, error) {
	return e.sig, nil
}
func (e *legacyEntity) VerificationContent() (sgverify.VerificationContent, error) {
	if e.cert != nil {
		return bundle.NewCertificate(e.cert), nil
	}
	if e.key != nil {
		return keyContent{e.key}, nil
	}
	return nil, errors.New("no certificate or key")
}

// keyContent is the verification content of a key-signed entity: the
// configured key that verified its signature.
type keyContent struct{ k *trustedKey }

func (c keyContent) CompareKey(key any, _ root.TrustedMaterial) bool {
	eq, ok := key.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(c.k.public)
}
func (c keyContent) ValidAtTime(time.Time, root.TrustedMaterial) bool { return true }
func (c keyContent) Certificate() *x509.Certificate                   { return nil }
func (c keyContent) Intermediates() []*x509.Certificate               { return nil }
func (c keyContent) PublicKey() sgverify.PublicKeyProvider            { return c }
func (c keyContent) Hint() string                                     { return c.k.id }
