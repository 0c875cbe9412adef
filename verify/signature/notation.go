package signature

import (
	"context"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Envelope media types of Notary Project signatures.
const (
	notationJWS  = "application/jose+json"
	notationCOSE = "application/cose"
)

// checkNotationArtifact hands one Notary Project signature's envelope to
// the Notation verifier.
func (s *session) checkNotationArtifact(ctx context.Context, desc ocispec.Descriptor, m *ocispec.Manifest) error {
	var layer *ocispec.Descriptor
	for i := range m.Layers {
		if mt := m.Layers[i].MediaType; mt == notationJWS || mt == notationCOSE {
			layer = &m.Layers[i]
			break
		}
	}
	if layer == nil {
		s.refuse("is a Notation signature without a JWS or COSE envelope")
		return nil
	}
	envelope, err := s.blob(ctx, *layer)
	if err != nil || envelope == nil {
		return err
	}
	subject, err := s.subjectDescriptor(ctx, m)
	if err != nil {
		return err
	}
	identity, err := s.v.notation.Verify(ctx, envelope, layer.MediaType, subject)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("checking Notation signature %s: %w", desc.Digest, err)
		}
		s.refuse("is a Notation signature that does not verify (%v)", err)
		return nil
	}
	s.accept(acceptance{kind: "notation", identity: identity, keyID: desc.Digest.String(),
		message: fmt.Sprintf("Notation signature by %s", identity)})
	return nil
}

// subjectDescriptor describes the image being verified, as Notation
// signatures name it (media type, digest and size). The size comes from
// the signature manifest's subject when it names the image: airlock's own
// fetcher does not serve the image while the image is being decided, so
// reading it here would leave every Notation-signed image undecided. A
// wrong size there cannot let a signature through, as Notation compares
// the whole descriptor with the one signed, and the digest is the
// image's. Without such a subject the image's manifest is read.
func (s *session) subjectDescriptor(ctx context.Context, m *ocispec.Manifest) (ocispec.Descriptor, error) {
	if m.Subject != nil && m.Subject.Digest == s.subject && m.Subject.Size > 0 && s.subjectType != "" {
		return ocispec.Descriptor{MediaType: s.subjectType, Digest: s.subject, Size: m.Subject.Size}, nil
	}
	body, mediaType, _, err := s.f.Manifest(ctx, s.subject.String())
	if isNotFound(err) {
		return ocispec.Descriptor{}, fmt.Errorf("the image %s itself is not in the registry: %w", s.subject, err)
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("fetching the image manifest %s: %w", s.subject, err)
	}
	if s.subjectType != "" {
		mediaType = s.subjectType
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: s.subject, Size: int64(len(body))}, nil
}
