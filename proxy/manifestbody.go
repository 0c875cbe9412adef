package proxy

import (
	"encoding/json"
	"mime"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify"
)

// Media types whose blobs are not a config and layers.
const (
	mediaDockerV1JSON = "application/vnd.docker.distribution.manifest.v1+json"
	mediaOCIArtifact  = "application/vnd.oci.artifact.manifest.v1+json"
)

// servedMediaType is the Content-Type a manifest is served with: the media
// type its body declares, which the digest fixes for every upstream alike;
// else what the repository's own upstream sent (never another upstream's:
// that is why the result is kept on the repository's link); else a guess
// from the body's shape.
func servedMediaType(contentType string, body []byte) string {
	var m struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		Manifests     json.RawMessage `json:"manifests"`
		Config        json.RawMessage `json:"config"`
		Signatures    json.RawMessage `json:"signatures"`
	}
	parsed := json.Unmarshal(body, &m) == nil
	if parsed && validMediaType(m.MediaType) {
		return m.MediaType
	}
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && validMediaType(mt) &&
		mt != mediaOctetStream && mt != "application/json" && mt != "text/plain" && mt != "text/html" {
		return mt
	}
	switch {
	case parsed && m.SchemaVersion == 1 && m.Signatures != nil:
		return mediaDockerV1
	case parsed && m.SchemaVersion == 1:
		return mediaDockerV1JSON
	case parsed && m.Manifests != nil:
		return mediaOCIIndex
	}
	return mediaOCIManifest
}

type blobRef struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// referencedBlobs lists, with their declared sizes, the blobs a manifest of
// the given (served) media type references: an image manifest's config and
// layers, a schema 1 manifest's fsLayers, an artifact manifest's blobs. An
// index references manifests, not blobs, and yields nothing. Only the
// fields of the manifest's own type count: the gate judged the manifest as
// that type, so a layer smuggled into a field of another type (an index
// with "layers", an image manifest with "fsLayers") must not be admitted
// with it. References airlock cannot serve (an algorithm other than sha256
// and sha512, a malformed digest) are left out: a client asking for them
// gets a clear error at the blob endpoint, and the manifest itself is
// still served.
func referencedBlobs(mediaType string, body []byte) []metadata.BlobLink {
	var out []blobRef
	switch mediaType {
	case mediaOCIIndex, mediaDockerList:
		return nil
	case mediaDockerV1, mediaDockerV1JSON:
		var m struct {
			FSL []struct {
				BlobSum digest.Digest `json:"blobSum"`
			} `json:"fsLayers"`
		}
		if json.Unmarshal(body, &m) != nil {
			return nil
		}
		for _, l := range m.FSL {
			out = append(out, blobRef{Digest: l.BlobSum}) // schema 1 gives no sizes
		}
	case mediaOCIArtifact:
		var m struct {
			Blobs []blobRef `json:"blobs"`
		}
		if json.Unmarshal(body, &m) != nil {
			return nil
		}
		out = m.Blobs
	default:
		var m struct {
			Config *blobRef  `json:"config"`
			Layers []blobRef `json:"layers"`
		}
		if json.Unmarshal(body, &m) != nil {
			return nil
		}
		if m.Config != nil {
			out = append(out, *m.Config)
		}
		out = append(out, m.Layers...)
	}
	valid := make([]metadata.BlobLink, 0, len(out))
	for _, b := range out {
		if verify.Check(b.Digest) == nil && b.Size >= 0 {
			valid = append(valid, metadata.BlobLink{Digest: b.Digest, Size: b.Size})
		}
	}
	return valid
}

// childManifests lists the manifests an index of the given (served) media
// type names; any other manifest names none.
func childManifests(mediaType string, body []byte) []digest.Digest {
	if mediaType != mediaOCIIndex && mediaType != mediaDockerList {
		return nil
	}
	var idx struct {
		Manifests []struct {
			Digest digest.Digest `json:"digest"`
		} `json:"manifests"`
	}
	if json.Unmarshal(body, &idx) != nil {
		return nil
	}
	out := make([]digest.Digest, 0, len(idx.Manifests))
	for _, m := range idx.Manifests {
		if verify.Check(m.Digest) == nil {
			out = append(out, m.Digest)
		}
	}
	return out
}
