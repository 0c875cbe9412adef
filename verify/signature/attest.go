package signature

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"

	"github.com/opencontainers/go-digest"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
)

// DSSEMediaType is the layer media type of cosign's tag-scheme
// attestations ("sha256-<hex>.att"): a DSSE envelope over an in-toto
// statement.
const DSSEMediaType = "application/vnd.dsse.envelope.v1+json"

// legacyAttestationTag is cosign's tag for d's attestations.
func legacyAttestationTag(d digest.Digest) string {
	return d.Algorithm().String() + "-" + d.Encoded() + ".att"
}

// legacyAttestations looks for the attestations the policy requires in
// cosign's attestation tag, once a signature verified.
func (s *session) legacyAttestations(ctx context.Context) error {
	if s.accepted == nil || len(s.missingAttestations()) == 0 {
		return nil
	}
	m, err := s.manifest(ctx, legacyAttestationTag(s.subject), 0)
	if err != nil || m == nil {
		return err
	}
	for _, layer := range m.Layers {
		if layer.MediaType != DSSEMediaType {
			continue
		}
		if err := s.take(); err != nil {
			return err
		}
		body, err := s.blob(ctx, layer)
		if err != nil {
			return err
		}
		if body != nil {
			s.checkLegacyAttestation(body, layer.Annotations)
		}
		if s.done() {
			return nil
		}
	}
	return nil
}

// checkLegacyAttestation verifies one cosign tag-scheme attestation and
// records its predicate type when it holds for the subject.
func (s *session) checkLegacyAttestation(body []byte, ann map[string]string) {
	s.attesting = "an attestation"
	defer func() { s.attesting = "" }()
	var env dsse.Envelope
	if err := json.Unmarshal(body, &env); err != nil || len(env.Signatures) != 1 {
		s.refuse("is an attestation whose DSSE envelope cannot be read")
		return
	}
	entries, err := legacyTlogEntries(ann[annotationBundle])
	if err != nil {
		s.refuse("is an attestation whose Rekor bundle cannot be read (%v)", err)
		return
	}
	timestamps, err := legacyTimestamps(ann[annotationTimestamp])
	if err != nil {
		s.refuse("is an attestation whose RFC 3161 timestamp cannot be read (%v)", err)
		return
	}
	predicate, names := statementOf(env.Payload)
	if predicate == "" {
		s.refuse("is an attestation without an in-toto statement")
		return
	}
	s.attesting = predicate
	defer func() { s.attesting = "" }()
	if !names[s.subject.Encoded()] {
		s.refuse("is an attestation (%s) about another image (%s)", predicate, otherSubject(names))
		return
	}
	want, _ := hex.DecodeString(s.subject.Encoded())
	artifact := sgverify.WithArtifactDigest(s.subject.Algorithm().String(), want)
	entity := &legacyEntity{sig: &bundle.Envelope{Envelope: &env}, tlog: entries, timestamps: timestamps}
	if certPEM := ann[annotationCertificate]; certPEM != "" {
		certs, err := cryptoutils.UnmarshalCertificatesFromPEM([]byte(certPEM))
		if err != nil || len(certs) == 0 {
			s.refuse("is an attestation whose certificate cannot be read")
			return
		}
		if len(s.v.identities) == 0 {
			s.refuse("is a keyless attestation, and the policy trusts keys only")
			return
		}
		entity.cert = certs[0]
		who := certIdentity(certs[0])
		if len(entries) == 0 {
			s.refuse("is a keyless attestation (%s) by %s without a Rekor bundle, which cannot be checked offline", predicate, who)
			return
		}
		if _, ok := s.verifyKeyless(entity, artifact, who); !ok {
			return
		}
	} else {
		_, err := s.verifyWithKeys(func(k *trustedKey) sgverify.SignedEntity {
			e := *entity
			e.key = k
			return &e
		}, artifact)
		if err != nil {
			s.refuse("is an attestation (%s) that %v", predicate, err)
			return
		}
	}
	if s.attestations == nil {
		s.attestations = map[string]bool{}
	}
	s.attestations[predicate] = true
	s.log("attestation verified", slog.String("predicateType", predicate))
}
