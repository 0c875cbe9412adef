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
// signatures name it (media type, digest and size). The size is the one
// the signature manifest's subject gives when that names the digest
// being verified: the digest fixes the content, and airlock's own Fetcher
// does not serve the image it is verifying (it reads only signatures
// then), so only a signature manifest without that subject makes this
// read the image.
func (s *session) subjectDescriptor(ctx context.Context, m *ocispec.Manifest) (ocispec.Descriptor, error) {
	mediaType := s.subjectType
	if m.Subject != nil && m.Subject.Digest == s.subject && m.Subject.Size > 0 {
		if mediaType == "" {
			mediaType = m.Subject.MediaType
		}
		return ocispec.Descriptor{MediaType: mediaType, Digest: s.subject, Size: m.Subject.Size}, nil
	}
	body, fetchedType, _, err := s.f.Manifest(ctx, s.subject.String())
	if isNotFound(err) {
		return ocispec.Descriptor{}, fmt.Errorf("the image %s itself is not in the registry: %w", s.subject, err)
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("fetching the image manifest %s: %w", s.subject, err)
	}
	if mediaType == "" {
		mediaType = fetchedType
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: s.subject, Size: int64(len(body))}, nil
}
