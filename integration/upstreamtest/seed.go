package upstreamtest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image describes one single-platform image pushed to an Upstream.
type Image struct {
	Repo, Tag string
	Platform  v1.Platform
	// Digest is the manifest's digest and Manifest its bytes.
	Digest   v1.Hash
	Manifest []byte
	Config   v1.Hash
	Layers   []v1.Hash
}

// Blobs lists the config and the layers, every blob a pull fetches.
func (i Image) Blobs() []v1.Hash {
	return append([]v1.Hash{i.Config}, i.Layers...)
}

// Index describes a multi-platform image pushed to an Upstream.
type Index struct {
	Repo, Tag string
	Digest    v1.Hash
	Manifest  []byte
	// Images holds one image per platform, linux/amd64 first, then linux/arm64.
	Images []Image
}

// Image returns the image for architecture arch (e.g. "arm64").
func (x Index) Image(arch string) (Image, bool) {
	for _, img := range x.Images {
		if img.Platform.Architecture == arch {
			return img, true
		}
	}
	return Image{}, false
}

// PushImage pushes a linux/amd64 image of layers random layers of
// layerSize uncompressed bytes each to repo:tag.
func (u *Upstream) PushImage(tb testing.TB, repo, tag string, layerSize int64, layers int) Image {
	tb.Helper()
	img, desc := u.buildImage(tb, repo, tag, layerSize, layers, "amd64")
	u.write(tb, repo, tag, func(ref name.Reference, opts ...remote.Option) error {
		return remote.Write(ref, img, opts...)
	})
	return desc
}

// PushIndex pushes a manifest list of a linux/amd64 and a linux/arm64 image,
// each of layers random layers of layerSize bytes, to repo:tag. The
// platform images are reachable by digest only.
func (u *Upstream) PushIndex(tb testing.TB, repo, tag string, layerSize int64, layers int) Index {
	tb.Helper()
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	out := Index{Repo: repo, Tag: tag}
	for _, arch := range []string{"amd64", "arm64"} {
		img, desc := u.buildImage(tb, repo, "", layerSize, layers, arch)
		platform := desc.Platform
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &platform},
		})
		out.Images = append(out.Images, desc)
	}
	u.write(tb, repo, tag, func(ref name.Reference, opts ...remote.Option) error {
		return remote.WriteIndex(ref, idx, opts...)
	})
	var err error
	if out.Digest, err = idx.Digest(); err != nil {
		tb.Fatalf("digest of index: %v", err)
	}
	if out.Manifest, err = idx.RawManifest(); err != nil {
		tb.Fatalf("raw index: %v", err)
	}
	return out
}

// Blob returns the stored bytes of blob d, as served when not tampered.
func (u *Upstream) Blob(tb testing.TB, d v1.Hash) []byte {
	tb.Helper()
	rec := httptest.NewRecorder()
	req := httptest.NewRequestWithContext(tb.Context(), http.MethodGet, "/v2/any/blobs/"+d.String(), nil)
	u.inner.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		tb.Fatalf("blob %s: upstream answered %d", d, rec.Code)
	}
	return rec.Body.Bytes()
}

func (u *Upstream) buildImage(tb testing.TB, repo, tag string, layerSize int64, layers int, arch string) (v1.Image, Image) {
	tb.Helper()
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		tb.Fatalf("random image: %v", err)
	}
	// random.Image leaves the platform empty; containerd and dockerd check
	// the config's platform against the one they pull for.
	cfg, err := img.ConfigFile()
	if err != nil {
		tb.Fatalf("config of random image: %v", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Config.Cmd = []string{"/bin/true"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		tb.Fatalf("set platform: %v", err)
	}
	desc := Image{Repo: repo, Tag: tag, Platform: v1.Platform{OS: "linux", Architecture: arch}}
	if desc.Digest, err = img.Digest(); err != nil {
		tb.Fatalf("image digest: %v", err)
	}
	if desc.Manifest, err = img.RawManifest(); err != nil {
		tb.Fatalf("image manifest: %v", err)
	}
	if desc.Config, err = img.ConfigName(); err != nil {
		tb.Fatalf("config digest: %v", err)
	}
	ls, err := img.Layers()
	if err != nil {
		tb.Fatalf("layers: %v", err)
	}
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			tb.Fatalf("layer digest: %v", err)
		}
		desc.Layers = append(desc.Layers, d)
	}
	return img, desc
}

// write pushes straight into the inner registry, bypassing authentication
// and recording, so that seeding never shows up in a test's counts.
func (u *Upstream) write(tb testing.TB, repo, tag string, push func(name.Reference, ...remote.Option) error) {
	tb.Helper()
	ref, err := name.ParseReference(fmt.Sprintf("%s/%s:%s", u.Host, repo, tag), name.Insecure)
	if err != nil {
		tb.Fatalf("reference for %s:%s: %v", repo, tag, err)
	}
	if err := push(ref, remote.WithContext(tb.Context()), remote.WithTransport(handlerTransport{u.inner})); err != nil {
		tb.Fatalf("push %s: %v", ref, err)
	}
}

// handlerTransport answers HTTP requests by calling a handler in-process.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rec := httptest.NewRecorder()
	in := r.Clone(r.Context())
	if in.Body == nil {
		// Server-side requests always have a body; the registry relies on it.
		in.Body = http.NoBody
	}
	// Drain what the registry leaves so the client sees its body consumed,
	// as over a real connection.
	defer func() { _, _ = io.Copy(io.Discard, in.Body); _ = in.Body.Close() }()
	t.h.ServeHTTP(rec, in)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}
