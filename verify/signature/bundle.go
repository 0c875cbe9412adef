package signature

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
)

// checkBundleArtifact checks one cosign v3 Sigstore bundle referrer.
func (s *session) checkBundleArtifact(ctx context.Context, desc ocispec.Descriptor, m *ocispec.Manifest) error {
	var layer *ocispec.Descriptor
	for i := range m.Layers {
		if strings.HasPrefix(m.Layers[i].MediaType, "application/vnd.dev.sigstore.bundle") {
			layer = &m.Layers[i]
			break
		}
	}
	if layer == nil {
		s.refuse("is a Sigstore bundle artifact without a bundle layer")
		return nil
	}
	body, err := s.blob(ctx, *layer)
	if err != nil || body == nil {
		return err
	}
	var b bundle.Bundle
	if err := b.UnmarshalJSON(body); err != nil {
		s.refuse("is a Sigstore bundle that cannot be read (%v)", err)
		return nil
	}
	s.checkBundle(&b)
	return nil
}

// checkBundle verifies a bundle, then sorts it: a signature of the
// subject, an attestation about it, or neither.
func (s *session) checkBundle(b *bundle.Bundle) {
	predicate, names := bundleStatement(b)
	if predicate != "" && !names[s.subject.Encoded()] {
		s.refuse("names another image (%s)", otherSubject(names))
		return
	}
	if predicate != "" && predicate != CosignSignPredicateType {
		s.attesting = predicate
		defer func() { s.attesting = "" }()
	}
	vc, err := b.VerificationContent()
	if err != nil {
		s.refuse("is a Sigstore bundle without a certificate or key (%v)", err)
		return
	}
	want, _ := hex.DecodeString(s.subject.Encoded())
	artifact := sgverify.WithArtifactDigest(s.subject.Algorithm().String(), want)

	var a acceptance
	if cert := vc.Certificate(); cert != nil {
		if len(s.v.identities) == 0 {
			s.refuse("is a keyless signature, and the policy trusts keys only")
			return
		}
		res, ok := s.verifyKeyless(b, artifact, certIdentity(cert))
		if !ok {
			return
		}
		a = s.keylessAcceptance(res, cert, "cosign keyless signature (Sigstore bundle)")
	} else {
		key, err := s.verifyBundleKey(b, artifact)
		if err != nil {
			s.refuse("%v", err)
			return
		}
		a = acceptance{kind: "key", keyID: key.id, message: fmt.Sprintf("signed by key %s (Sigstore bundle)", key.id)}
	}
	switch predicate {
	case "", CosignSignPredicateType:
		s.accept(a)
	default:
		if s.attestations == nil {
			s.attestations = map[string]bool{}
		}
		s.attestations[predicate] = true
		s.attesting = ""
		s.refuse("is an attestation (%s), not a signature", predicate)
	}
}

// verifyBundleKey verifies a key-signed bundle against each configured key
// in turn.
func (s *session) verifyBundleKey(b *bundle.Bundle, artifact sgverify.ArtifactPolicyOption) (*trustedKey, error) {
	return s.verifyWithKeys(func(*trustedKey) sgverify.SignedEntity { return b }, artifact)
}

// verifyWithKeys verifies the key-signed entity that entity returns for
// each configured key in turn, with the log entries and timestamps the
// policy requires, and returns the key that verified.
func (s *session) verifyWithKeys(entity func(*trustedKey) sgverify.SignedEntity, artifact sgverify.ArtifactPolicyOption) (*trustedKey, error) {
	if len(s.v.keys) == 0 {
		return nil, fmt.Errorf("is signed with a key, and the policy trusts keyless identities only")
	}
	var opts []sgverify.VerifierOption
	if n := s.v.cfg.TransparencyLog; n > 0 {
		opts = append(opts, sgverify.WithTransparencyLog(n), sgverify.WithObserverTimestamps(1))
	}
	if n := s.v.cfg.Timestamps; n > 0 {
		opts = append(opts, sgverify.WithSignedTimestamps(n))
	}
	if len(opts) == 0 {
		opts = append(opts, sgverify.WithNoObserverTimestamps())
	}
	var last error
	for i := range s.v.keys {
		k := &s.v.keys[i]
		tm := root.TrustedMaterialCollection{keyMaterial(*k)}
		if s.v.root != nil {
			tm = append(tm, s.v.root)
		}
		verifier, err := sgverify.NewVerifier(tm, opts...)
		if err != nil {
			return nil, fmt.Errorf("could not be checked (%v)", err)
		}
		if _, err := verifier.Verify(entity(k), sgverify.NewPolicy(artifact, sgverify.WithKey())); err != nil {
			last = err
			continue
		}
		return k, nil
	}
	if last != nil && strings.Contains(last.Error(), "failed to verify signature") {
		return nil, fmt.Errorf("is signed by a key the policy does not list")
	}
	return nil, fmt.Errorf("is signed with a key but does not verify (%v)", last)
}

// bundleStatement returns the predicate type and the subject digests (hex)
// of a DSSE bundle's in-toto statement, unverified; "" for a bundle
// without one.
func bundleStatement(b *bundle.Bundle) (string, map[string]bool) {
	env, err := b.Envelope()
	if err != nil || env == nil {
		return "", nil
	}
	return statementOf(env.RawEnvelope().Payload)
}

// statementOf reads an in-toto statement from a DSSE payload (base64).
func statementOf(payloadB64 string) (string, map[string]bool) {
	payload, err := base64.StdEncoding.DecodeString(payloadB64)
	if err != nil {
		return "", nil
	}
	var st struct {
		PredicateType string `json:"predicateType"`
		Subject       []struct {
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
	}
	if json.Unmarshal(payload, &st) != nil {
		return "", nil
	}
	names := map[string]bool{}
	for _, sub := range st.Subject {
		if h := sub.Digest["sha256"]; h != "" {
			names[strings.ToLower(h)] = true
		}
	}
	if st.PredicateType == "" {
		st.PredicateType = "an unnamed predicate"
	}
	return st.PredicateType, names
}

func otherSubject(names map[string]bool) string {
	for h := range names {
		return "sha256:" + h
	}
	return "no digest"
}
