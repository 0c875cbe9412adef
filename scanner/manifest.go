package scanner

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Media types the scanner tells apart.
const (
	mtOCIIndex     = "application/vnd.oci.image.index.v1+json"
	mtDockerList   = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtOCIManifest  = "application/vnd.oci.image.manifest.v1+json"
	mtDockerV2     = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerV1     = "application/vnd.docker.distribution.manifest.v1+json"
	mtDockerV1Sig  = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mtOCIConfig    = "application/vnd.oci.image.config.v1+json"
	mtDockerConfig = "application/vnd.docker.container.image.v1+json"
)

// fsLayer reports whether a layer media type is one a container runtime
// unpacks as a filesystem: containerd and Docker take any type under the
// OCI layer or Docker rootfs prefixes (uncompressed, gzip, zstd, foreign,
// non-distributable; Docker compares in lower case and by prefix) and
// sniff the compression from the bytes. Every such layer is scanned: one
// skipped would reach clients unscanned. Other layers (a Helm chart's, a
// signature's) are never unpacked.
func fsLayer(mt string) bool {
	mt = strings.ToLower(strings.TrimSpace(mt))
	return strings.HasPrefix(mt, "application/vnd.oci.image.layer.") ||
		strings.HasPrefix(mt, "application/vnd.docker.image.rootfs.")
}

// emptyConfig is the digest of "{}", the config of OCI artifacts (the
// empty descriptor, and what older clients wrote for artifacts): it
// declares no root filesystem, so no runtime unpacks what it lists.
const emptyConfig = digest.Digest("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")

type descriptor struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      int64         `json:"size"`
}

// image is what the scanner needs of a manifest: its filesystem layers,
// in order, or why it has none worth scanning.
type image struct {
	layers []descriptor
	size   int64
	// note says why there is nothing to scan; layers is empty then.
	note string
}

// parseManifest reads a manifest as the registry served it.
func parseManifest(raw []byte, mediaType string) (image, error) {
	var m struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     string          `json:"mediaType"`
		ArtifactType  string          `json:"artifactType"`
		Config        *descriptor     `json:"config"`
		Layers        []descriptor    `json:"layers"`
		Manifests     json.RawMessage `json:"manifests"`
		FSLayers      json.RawMessage `json:"fsLayers"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return image{}, permanent(fmt.Errorf("the manifest is not JSON: %w", err))
	}
	mt := mediaType
	if mt == "" || mt == "application/json" || mt == "application/octet-stream" {
		mt = m.MediaType
	}
	switch {
	case mt == mtOCIIndex || mt == mtDockerList || (mt == "" && m.Manifests != nil):
		return image{note: "an image index: each platform's manifest is scanned on its own"}, nil
	case mt == mtDockerV1 || mt == mtDockerV1Sig || m.FSLayers != nil:
		// Its layers are unpacked like any image's, and it has no config
		// to tell an artifact by: refused rather than waved through.
		return image{}, permanent(errors.New("a Docker schema 1 manifest cannot be scanned; its layers would reach clients unscanned. Push the image again with a current client, or have an admin release it"))
	}
	// What decides is the layers, not the manifest's or the config's
	// media type: runtimes unpack filesystem layers whatever those say
	// (Docker takes configs typed application/octet-stream, containerd
	// reads any config), so only a config that declares no filesystem
	// at all (an artifact's "{}") makes them harmless.
	var img image
	for _, l := range m.Layers {
		if !fsLayer(l.MediaType) {
			continue
		}
		if err := l.Digest.Validate(); err != nil {
			return image{}, permanent(fmt.Errorf("layer digest %q: %w", l.Digest, err))
		}
		img.layers = append(img.layers, l)
		img.size += l.Size
	}
	artifact := m.Config != nil && m.Config.Digest == emptyConfig
	if len(img.layers) > 0 && !artifact {
		return img, nil
	}
	switch {
	case mt != mtOCIManifest && mt != mtDockerV2 && mt != "":
		return image{note: fmt.Sprintf("not an image manifest (%s): nothing to scan", mt)}, nil
	case m.Config == nil:
		return image{}, permanent(fmt.Errorf("the manifest has no config"))
	case m.Config.MediaType != mtOCIConfig && m.Config.MediaType != mtDockerConfig || artifact:
		what := m.ArtifactType
		if what == "" {
			what = m.Config.MediaType
		}
		return image{note: fmt.Sprintf("not a container image (%s): nothing to scan", what)}, nil
	}
	return image{note: "the image has no filesystem layers: nothing to scan"}, nil
}

// permanentError is a failure another attempt cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func permanent(err error) error { return permanentError{err} }
