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
	subject, ok := s.subjectDescriptor(m)
	if !ok {
		return nil
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

// subjectDescriptor describes the image being verified as Notation
// signatures name it (media type, digest and size), from the signature
// manifest's subject: the digest pins the content, so its size there is
// the image's or the envelope will not match it. The image itself is not
// read: airlock is deciding whether it may be, and reads only signatures
// meanwhile. A signature whose manifest names another subject, or none,
// is refused.
func (s *session) subjectDescriptor(m *ocispec.Manifest) (ocispec.Descriptor, bool) {
	if m.Subject == nil {
		s.refuse("is a Notation signature whose manifest names no subject")
		return ocispec.Descriptor{}, false
	}
	if m.Subject.Digest != s.subject {
		s.refuse("names another image (%s)", m.Subject.Digest)
		return ocispec.Descriptor{}, false
	}
	mediaType := s.subjectType
	if mediaType == "" {
		mediaType = m.Subject.MediaType
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: s.subject, Size: m.Subject.Size}, true
}
