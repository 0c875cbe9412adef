package signaturetest

import (
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/verify/signature"
)

// cosign's annotations on a simple-signing layer.
const (
	AnnotationSignature   = "dev.cosignproject.cosign/signature"
	AnnotationCertificate = "dev.sigstore.cosign/certificate"
	AnnotationChain       = "dev.sigstore.cosign/chain"
	AnnotationBundle      = "dev.sigstore.cosign/bundle"
	AnnotationTimestamp   = "dev.sigstore.cosign/rfc3161timestamp"
)

// Payload is cosign's simple-signing payload for d pulled as ref (e.g.
// "registry.test/library/app"), byte for byte as cosign writes it.
func Payload(ref string, d digest.Digest) []byte {
	type critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	}
	var p struct {
		Critical critical          `json:"critical"`
		Optional map[string]string `json:"optional"`
	}
	p.Critical.Identity.DockerReference = ref
	p.Critical.Image.DockerManifestDigest = d.String()
	p.Critical.Type = "cosign container image signature"
	b, _ := json.Marshal(p)
	return b
}

// Layer is one signature in cosign's signature manifest: the payload
// and its annotations. Tests may edit Annotations (drop the Rekor
// bundle, swap the certificate) before building the manifest.
type Layer struct {
	// MediaType defaults to cosign's simple-signing type; attestations
	// are DSSE envelopes.
	MediaType   string
	Payload     []byte
	Annotations map[string]string
}

// SignKey signs payload with k as `cosign sign --key` does (without a
// transparency-log upload).
func SignKey(tb testing.TB, k *Key, payload []byte) Layer {
	tb.Helper()
	return Layer{Payload: payload, Annotations: map[string]string{
		AnnotationSignature: base64.StdEncoding.EncodeToString(k.Sign(tb, payload)),
	}}
}

// Artifact is a manifest with the blobs it references, ready to push.
type Artifact struct {
	MediaType string
	Manifest  []byte
	Blobs     [][]byte
	// ArtifactType is the descriptor's artifactType in a referrers list.
	ArtifactType string
}

// Descriptor describes the artifact's manifest.
func (a Artifact) Descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: a.MediaType, Digest: digest.FromBytes(a.Manifest),
		Size: int64(len(a.Manifest)), ArtifactType: a.ArtifactType}
}

// SignatureManifest builds cosign's signature manifest (the image at tag
// "sha256-<hex>.sig", or "sha256-<hex>.att" for attestations) holding layers, as cosign builds it: an OCI image
// of simple-signing layers on go-containerregistry's empty image.
func SignatureManifest(tb testing.TB, layers ...Layer) Artifact {
	tb.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	a := Artifact{MediaType: string(types.OCIManifestSchema1)}
	for _, l := range layers {
		var err error
		mt := l.MediaType
		if mt == "" {
			mt = signature.SimpleSigningMediaType
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:       static.NewLayer(l.Payload, types.MediaType(mt)),
			Annotations: l.Annotations,
		})
		if err != nil {
			tb.Fatalf("building signature manifest: %v", err)
		}
		a.Blobs = append(a.Blobs, l.Payload)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		tb.Fatalf("signature manifest config: %v", err)
	}
	if a.Manifest, err = img.RawManifest(); err != nil {
		tb.Fatalf("signature manifest: %v", err)
	}
	a.Blobs = append(a.Blobs, cfg)
	return a
}

// emptyConfig is the OCI empty descriptor's content.
var emptyConfig = []byte("{}")

// ReferrerArtifact builds an OCI artifact manifest of artifactType whose
// subject is subject and whose one layer is content of layerType, as
// cosign v3 stores a bundle and Notation a signature envelope.
func ReferrerArtifact(tb testing.TB, artifactType string, subject ocispec.Descriptor, layerType string, content []byte, annotations map[string]string) Artifact {
	tb.Helper()
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON,
			Digest: digest.FromBytes(emptyConfig), Size: int64(len(emptyConfig))},
		Layers:      []ocispec.Descriptor{{MediaType: layerType, Digest: digest.FromBytes(content), Size: int64(len(content))}},
		Subject:     &ocispec.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
		Annotations: annotations,
	}
	m.SchemaVersion = 2
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatalf("building referrer manifest: %v", err)
	}
	return Artifact{MediaType: ocispec.MediaTypeImageManifest, Manifest: b, Blobs: [][]byte{emptyConfig, content}, ArtifactType: artifactType}
}

// BundleArtifact stores a Sigstore bundle as cosign v3 does: an artifact
// of type application/vnd.dev.sigstore.bundle.v0.3+json referring to
// subject.
func BundleArtifact(tb testing.TB, subject ocispec.Descriptor, bundle []byte, predicateType string) Artifact {
	tb.Helper()
	if predicateType == "" {
		predicateType = signature.CosignSignPredicateType
	}
	return ReferrerArtifact(tb, signature.BundleArtifactType, subject, signature.BundleArtifactType, bundle, map[string]string{
		"dev.sigstore.bundle.content":       "dsse-envelope",
		"dev.sigstore.bundle.predicateType": predicateType,
	})
}
