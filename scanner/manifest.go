package scanner

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Media types the scanner tells apart.
const (
	mtOCIIndex      = "application/vnd.oci.image.index.v1+json"
	mtDockerList    = "application/vnd.docker.distribution.manifest.list.v2+json"
	mtOCIManifest   = "application/vnd.oci.image.manifest.v1+json"
	mtDockerV2      = "application/vnd.docker.distribution.manifest.v2+json"
	mtDockerV1      = "application/vnd.docker.distribution.manifest.v1+json"
	mtDockerV1Sig   = "application/vnd.docker.distribution.manifest.v1+prettyjws"
	mtOCIConfig     = "application/vnd.oci.image.config.v1+json"
	mtDockerConfig  = "application/vnd.docker.container.image.v1+json"
	mtDockerLayer   = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	mtDockerForeign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// tarLayer reports whether a layer media type is a filesystem layer, and
// whether it is one a registry need not distribute (a Windows base layer).
func tarLayer(mt string) (tar, foreign bool) {
	switch mt {
	case mtDockerLayer:
		return true, false
	case mtDockerForeign:
		return true, true
	}
	const oci = "application/vnd.oci.image.layer."
	if !strings.HasPrefix(mt, oci) {
		return false, false
	}
	rest := strings.TrimPrefix(mt, oci)
	foreign = strings.HasPrefix(rest, "nondistributable.")
	rest = strings.TrimPrefix(rest, "nondistributable.")
	switch rest {
	case "v1.tar", "v1.tar+gzip", "v1.tar+zstd":
		return true, foreign
	}
	return false, false
}

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
		return image{note: "a Docker schema 1 manifest: not scanned (push the image again with a current client)"}, nil
	case mt != mtOCIManifest && mt != mtDockerV2 && mt != "":
		return image{note: fmt.Sprintf("not an image manifest (%s): nothing to scan", mt)}, nil
	}
	if m.Config == nil {
		return image{}, permanent(fmt.Errorf("the manifest has no config"))
	}
	if m.Config.MediaType != mtOCIConfig && m.Config.MediaType != mtDockerConfig {
		what := m.ArtifactType
		if what == "" {
			what = m.Config.MediaType
		}
		return image{note: fmt.Sprintf("not a container image (%s): nothing to scan", what)}, nil
	}
	var img image
	for _, l := range m.Layers {
		tar, foreign := tarLayer(l.MediaType)
		if !tar {
			continue
		}
		if foreign {
			return image{note: "the image has non-distributable layers (a Windows base): not scanned"}, nil
		}
		if err := l.Digest.Validate(); err != nil {
			return image{}, permanent(fmt.Errorf("layer digest %q: %w", l.Digest, err))
		}
		img.layers = append(img.layers, l)
		img.size += l.Size
	}
	if len(img.layers) == 0 {
		return image{note: "the image has no filesystem layers: nothing to scan"}, nil
	}
	return img, nil
}

// permanentError is a failure another attempt cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func permanent(err error) error { return permanentError{err} }
