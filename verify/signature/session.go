package signature

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Media and artifact types of the signature formats.
const (
	SimpleSigningMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	BundleArtifactType     = "application/vnd.dev.sigstore.bundle.v0.3+json"
	NotationArtifactType   = "application/vnd.cncf.notary.signature"
	// CosignSignPredicateType is the in-toto predicate type of a cosign v3
	// signature; any other predicate type is an attestation.
	CosignSignPredicateType = "https://sigstore.dev/cosign/sign/v1"
)

// cosign's annotations on a simple-signing layer.
const (
	annotationSignature   = "dev.cosignproject.cosign/signature"
	annotationCertificate = "dev.sigstore.cosign/certificate"
	annotationChain       = "dev.sigstore.cosign/chain" // not read: the trusted root holds the intermediates
	annotationBundle      = "dev.sigstore.cosign/bundle"
	annotationTimestamp   = "dev.sigstore.cosign/rfc3161timestamp"
)

// errCap stops discovery once the policy's caps are reached.
var errCap = errors.New("cap reached")

// session is one Verify call: what was found, what was refused and why,
// and how much of the caps is left.
type session struct {
	ctx         context.Context // for logging only; calls that wait take their own
	v           *Verifier
	f           Fetcher
	subject     digest.Digest
	subjectType string

	budget   int64 // bytes left to read
	examined int
	capHit   string // why discovery stopped early, in words

	accepted     *acceptance
	refusals     []string        // one clause per refused signature, "is signed by …"
	attestations map[string]bool // predicate types of verified attestations
	// attesting is the predicate type of the attestation being checked,
	// whose refusals are kept apart in attRefusals.
	attesting   string
	attRefusals []string
}

// acceptance is the signature that verified.
type acceptance struct {
	kind, keyID, identity, message string
}

func (s *session) log(msg string, attrs ...slog.Attr) {
	s.v.log.LogAttrs(s.ctx, slog.LevelDebug, msg, append([]slog.Attr{
		slog.String("policy", s.v.policy), slog.String("digest", s.subject.String())}, attrs...)...)
}

// run discovers and checks signatures until one verifies (and every
// required attestation is found) or none are left.
func (s *session) run(ctx context.Context) error {
	s.ctx = ctx
	steps := []func(context.Context) error{s.legacy, s.referrers, s.legacyAttestations}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			if errors.Is(err, errCap) {
				return nil
			}
			return err
		}
		if s.done() {
			return nil
		}
	}
	return nil
}

// done says whether enough was found to stop looking.
func (s *session) done() bool {
	return s.accepted != nil && len(s.missingAttestations()) == 0
}

func (s *session) missingAttestations() []string {
	var missing []string
	for _, p := range s.v.cfg.Attestations {
		if !s.attestations[p] {
			missing = append(missing, p)
		}
	}
	return missing
}

// take counts one more signature examined, or reports the cap.
func (s *session) take() error {
	if s.examined >= s.v.cfg.MaxSignatures {
		s.capHit = fmt.Sprintf("stopped after examining %d signatures, the policy's maxSignatures", s.examined)
		return errCap
	}
	s.examined++
	return nil
}

// spend reserves n bytes of the budget, or reports the cap.
func (s *session) spend(n int64) error {
	if n < 0 || n > s.budget {
		s.capHit = fmt.Sprintf("stopped: the signature artifacts exceed the policy's maxBytes (%d bytes)", int64(s.v.cfg.MaxBytes))
		return errCap
	}
	s.budget -= n
	return nil
}

// manifest fetches a signature artifact's manifest within the budget. An
// absent one returns (nil, nil).
func (s *session) manifest(ctx context.Context, ref string, size int64) (*ocispec.Manifest, error) {
	if size > 0 {
		if err := s.spend(size); err != nil {
			return nil, err
		}
	}
	body, _, _, err := s.f.Manifest(ctx, ref)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fetching signature manifest %s: %w", ref, err)
	}
	// A size the listing claims is reserved before reading; what the
	// manifest really weighs beyond it is charged after.
	if extra := int64(len(body)) - max(size, 0); extra > 0 {
		if err := s.spend(extra); err != nil {
			return nil, err
		}
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		s.refuse("is not a valid manifest (%v)", err)
		return nil, nil
	}
	return &m, nil
}

// blob fetches a layer within the budget and checks its digest. An absent
// or corrupt one is refused and returns (nil, nil).
func (s *session) blob(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	if err := s.spend(desc.Size); err != nil {
		return nil, err
	}
	b, err := s.f.Blob(ctx, desc.Digest, desc.Size)
	if isNotFound(err) {
		s.refuse("is incomplete: its layer %s is missing from the registry", desc.Digest)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("fetching signature layer %s: %w", desc.Digest, err)
	}
	if int64(len(b)) != desc.Size || desc.Digest.Validate() != nil || desc.Digest.Algorithm().FromBytes(b) != desc.Digest {
		s.refuse("is corrupt: its layer does not match digest %s", desc.Digest)
		return nil, nil
	}
	return b, nil
}

// refuse records why one signature did not count, as a clause that
// follows "one" or "it" ("is signed by a key the policy does not list").
func (s *session) refuse(format string, args ...any) {
	r := fmt.Sprintf(format, args...)
	if s.attesting != "" {
		s.attRefusals = append(s.attRefusals, r)
		s.log("attestation refused", slog.String("predicateType", s.attesting), slog.String("reason", r))
		return
	}
	s.refusals = append(s.refusals, r)
	s.log("signature refused", slog.String("reason", r))
}

func (s *session) accept(a acceptance) {
	s.log("signature verified", slog.String("kind", a.kind), slog.String("keyId", a.keyID), slog.String("identity", a.identity))
	if s.accepted == nil {
		s.accepted = &a
	}
}

// legacyTag is cosign's tag for d's signatures: "sha256-<hex>.sig".
func legacyTag(d digest.Digest) string {
	return d.Algorithm().String() + "-" + d.Encoded() + ".sig"
}

// legacy checks the signatures in cosign's signature tag.
func (s *session) legacy(ctx context.Context) error {
	if len(s.v.keys) == 0 && len(s.v.identities) == 0 {
		return nil
	}
	m, err := s.manifest(ctx, legacyTag(s.subject), 0)
	if err != nil || m == nil {
		return err
	}
	for _, layer := range m.Layers {
		if err := s.take(); err != nil {
			return err
		}
		if layer.MediaType != SimpleSigningMediaType {
			s.refuse("is not a cosign signature (layer of type %q)", layer.MediaType)
			continue
		}
		payload, err := s.blob(ctx, layer)
		if err != nil {
			return err
		}
		if payload == nil {
			continue
		}
		s.checkSimpleSigning(payload, layer.Annotations)
		if s.done() {
			return nil
		}
	}
	return nil
}

// referrers checks cosign v3 bundles and Notation signatures among d's
// referrers.
func (s *session) referrers(ctx context.Context) error {
	descs, err := s.f.Referrers(ctx, s.subject, "")
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing referrers: %w", err)
	}
	for _, desc := range descs {
		var m *ocispec.Manifest
		taken := false
		if desc.ArtifactType == "" || desc.ArtifactType == ocispec.MediaTypeEmptyJSON {
			// Some registries list an artifact's config media type
			// instead of its artifactType: read the manifest to know.
			// Reading it counts against maxSignatures, or a list of
			// thousands of untyped entries would all be read.
			if err := s.take(); err != nil {
				return err
			}
			taken = true
			if m, err = s.manifest(ctx, desc.Digest.String(), desc.Size); err != nil {
				return err
			}
			if m == nil {
				continue
			}
			desc.ArtifactType = m.ArtifactType
		}
		var check func(context.Context, ocispec.Descriptor, *ocispec.Manifest) error
		switch {
		case strings.HasPrefix(desc.ArtifactType, "application/vnd.dev.sigstore.bundle") &&
			(len(s.v.keys) > 0 || len(s.v.identities) > 0):
			check = s.checkBundleArtifact
		case desc.ArtifactType == NotationArtifactType && s.v.notation != nil && s.v.cfg.Notation != nil:
			check = s.checkNotationArtifact
		default:
			continue
		}
		if !taken {
			if err := s.take(); err != nil {
				return err
			}
		}
		if m == nil {
			if m, err = s.manifest(ctx, desc.Digest.String(), desc.Size); err != nil {
				return err
			}
			if m == nil {
				s.refuse("is listed among the referrers but missing from the registry")
				continue
			}
		}
		if err := check(ctx, desc, m); err != nil {
			return err
		}
		if s.done() {
			return nil
		}
	}
	return nil
}

// evidence sums the session up for the gate.
func (s *session) evidence() metadata.SignatureEvidence {
	e := metadata.SignatureEvidence{
		Policy:    s.v.policy,
		Hash:      s.v.hash,
		Examined:  s.examined,
		CheckedAt: s.v.now().UTC(),
	}
	if a := s.accepted; a != nil {
		e.Kind, e.KeyID, e.Identity = a.kind, a.keyID, a.identity
		if missing := s.missingAttestations(); len(missing) > 0 {
			e.Message = fmt.Sprintf("%s, but no verified attestation of type %s was found, which the policy requires", a.message, strings.Join(missing, ", "))
			if len(s.attRefusals) > 0 {
				e.Message += " (refused: one " + strings.Join(s.attRefusals, "; one ") + ")"
			}
			if s.capHit != "" {
				e.Message += "; " + s.capHit
			}
			return e
		}
		e.Verified = true
		e.Message = a.message
		return e
	}
	e.Message = s.refusalMessage()
	return e
}

// refusalMessage says in one sentence why nothing verified.
func (s *session) refusalMessage() string {
	var msg string
	switch n := len(s.refusals); n {
	case 0:
		msg = fmt.Sprintf("no signature found (looked for %s and OCI referrers)", legacyTag(s.subject))
	case 1:
		msg = "1 signature found, not verified: it " + s.refusals[0]
	default:
		const shown = 4
		clauses := make([]string, 0, shown+1)
		for i, r := range s.refusals {
			if i == shown {
				clauses = append(clauses, fmt.Sprintf("and %d more", n-shown))
				break
			}
			clauses = append(clauses, "one "+r)
		}
		msg = fmt.Sprintf("%d signatures found, none verified: %s", n, strings.Join(clauses, "; "))
	}
	if s.capHit != "" {
		if len(s.refusals) == 0 {
			return s.capHit + "; no signature could be checked within it"
		}
		msg = s.capHit + "; " + msg
	}
	return msg
}

// isNotFound reports whether err says the registry does not hold what was
// asked for: it wraps ErrNotFound, or an error with a NotFound method (the
// convention of containerd's errdefs), so that a Fetcher need not import
// this package to say so.
func isNotFound(err error) bool {
	if errors.Is(err, ErrNotFound) {
		return true
	}
	var nf interface{ NotFound() }
	return errors.As(err, &nf)
}
