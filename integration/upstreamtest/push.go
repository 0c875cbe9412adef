package upstreamtest

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push pushes img, built by the test (an image whose layers hold real
// files, for instance), to repo:tag and describes it. Like PushImage it
// bypasses authentication and recording.
func (u *Upstream) Push(tb testing.TB, repo, tag string, img v1.Image) Image {
	tb.Helper()
	u.write(tb, repo, tag, func(ref name.Reference, opts ...remote.Option) error {
		return remote.Write(ref, img, opts...)
	})
	desc := Image{Repo: repo, Tag: tag}
	cfg, err := img.ConfigFile()
	if err != nil {
		tb.Fatalf("config of %s:%s: %v", repo, tag, err)
	}
	desc.Platform = v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if desc.Digest, err = img.Digest(); err != nil {
		tb.Fatalf("digest of %s:%s: %v", repo, tag, err)
	}
	if desc.Manifest, err = img.RawManifest(); err != nil {
		tb.Fatalf("manifest of %s:%s: %v", repo, tag, err)
	}
	if desc.Config, err = img.ConfigName(); err != nil {
		tb.Fatalf("config digest of %s:%s: %v", repo, tag, err)
	}
	ls, err := img.Layers()
	if err != nil {
		tb.Fatalf("layers of %s:%s: %v", repo, tag, err)
	}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			tb.Fatalf("layer digest of %s:%s: %v", repo, tag, err)
		}
		desc.Layers = append(desc.Layers, d)
	}
	return desc
}
