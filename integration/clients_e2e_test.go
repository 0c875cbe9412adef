package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// TestContainerdThroughAirlock pulls with containerd configured by
// hosts.toml, so every request carries ?ns=<registry>, and checks that one
// platform of a multi-arch image costs only that platform's blobs upstream.
func TestContainerdThroughAirlock(t *testing.T) {
	t.Parallel()
	// Docker Hub as it is: anonymous bearer tokens from a separate realm and
	// blobs redirected to a CDN on another host; gcr.io demanding credentials.
	hub := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.DockerHubStyle})
	gcr := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.Basic, Username: "robot", Password: "gcr-secret"})
	single := hub.PushImage(t, "library/app", "v1", 64<<10, 2)
	multi := hub.PushIndex(t, "library/multi", "v1", 32<<10, 2)
	every := hub.PushIndex(t, "library/every", "v1", 16<<10, 1)
	other := gcr.PushImage(t, "proj/tool", "v2", 32<<10, 1)
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{
		e2eDockerHub(hub),
		{Name: "gcr", URL: gcr.URL, Aliases: []string{"gcr.io"}, Retry: airlocktest.FastRetry(),
			Auth: e2eCredentialFiles(t, "robot", "gcr-secret")},
	}})
	ctd := clients.StartContainerd(t)
	hosts := t.TempDir()
	if err := clients.WriteHostsDir(hosts, map[string]string{"docker.io": al.URL, "gcr.io": al.URL}); err != nil {
		t.Fatal(err)
	}
	arm, _ := multi.Image("arm64")
	amd, _ := multi.Image("amd64")
	everyAmd, _ := every.Image("amd64")
	everyArm, _ := every.Image("arm64")
	for _, tc := range []struct {
		name, ref, digest string
		flags             []string
		up                *upstreamtest.Upstream
		fetched, skipped  []upstreamtest.Image
	}{
		{"single arch, ns=docker.io", "docker.io/library/app:v1", single.Digest.String(), nil, hub, []upstreamtest.Image{single}, nil},
		{"second registry, ns=gcr.io", "gcr.io/proj/tool:v2", other.Digest.String(), nil, gcr, []upstreamtest.Image{other}, nil},
		{"one platform of a multi-arch image", "docker.io/library/multi:v1", multi.Digest.String(),
			[]string{"--platform", "linux/arm64"}, hub, []upstreamtest.Image{arm}, []upstreamtest.Image{amd}},
		{"all platforms", "docker.io/library/every:v1", every.Digest.String(),
			[]string{"--all-platforms"}, hub, []upstreamtest.Image{everyAmd, everyArm}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ctd.Pull(t.Context(), hosts, tc.ref, tc.flags...); err != nil {
				t.Fatalf("pull through airlock: %v", err)
			}
			if got, err := ctd.ImageDigest(t.Context(), tc.ref); err != nil || got != tc.digest {
				t.Fatalf("image digest = %q, %v; want %s", got, err, tc.digest)
			}
			if v := tc.up.Violations(); len(v) > 0 {
				t.Errorf("upstream protocol violations (credentials sent to the CDN?): %v", v)
			}
			for _, img := range tc.fetched {
				for _, b := range img.Blobs() {
					if n := tc.up.BlobGETs(b); n != 1 {
						t.Errorf("upstream GETs of %s/%s blob %s = %d, want 1", img.Platform.OS, img.Platform.Architecture, b, n)
					}
					if n := tc.up.CDNGETs(b); tc.up == hub && n != 1 {
						t.Errorf("CDN GETs of blob %s = %d, want 1 (the redirect was not followed once)", b, n)
					}
				}
			}
			for _, img := range tc.skipped {
				if n := tc.up.ManifestGETs(img.Digest.String()); n != 0 {
					t.Errorf("upstream GETs of the %s manifest = %d, want 0", img.Platform.Architecture, n)
				}
				for _, b := range img.Blobs() {
					if n := tc.up.BlobGETs(b); n != 0 {
						t.Errorf("upstream GETs of %s blob %s = %d, want 0", img.Platform.Architecture, b, n)
					}
				}
			}
		})
	}
}

// TestDockerdThroughAirlock pulls with dockerd by the prefix route and
// through --registry-mirror, which sends un-prefixed paths to the default
// upstream.
func TestDockerdThroughAirlock(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t, upstreamtest.Options{})
	byPrefix := hub.PushImage(t, "library/app", "v1", 64<<10, 2)
	byMirror := hub.PushImage(t, "library/mirrored", "v1", 64<<10, 2)
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(hub)}})
	ctd := clients.StartContainerd(t)
	dkd := clients.StartDockerd(t, ctd, al.URL)
	for _, tc := range []struct {
		name, ref string
		img       upstreamtest.Image
	}{
		{"prefix route", al.Host + "/dockerhub/library/app:v1", byPrefix},
		{"registry mirror", "library/mirrored:v1", byMirror},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := dkd.Pull(t.Context(), tc.ref); err != nil {
				t.Fatalf("docker pull through airlock: %v", err)
			}
			digests, err := dkd.RepoDigests(t.Context(), tc.ref)
			if err != nil || len(digests) == 0 || !strings.HasSuffix(digests[0], "@"+tc.img.Digest.String()) {
				t.Fatalf("repo digests = %v, %v; want one ending in %s", digests, err, tc.img.Digest)
			}
			for _, b := range tc.img.Blobs() {
				if n := hub.BlobGETs(b); n != 1 {
					t.Errorf("upstream GETs of %s = %d, want 1", b, n)
				}
			}
		})
	}
}

// TestSkopeoThroughAirlock copies with skopeo through a registries.conf
// mirror on the prefix route, and inspects airlock directly.
func TestSkopeoThroughAirlock(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t, upstreamtest.Options{})
	img := hub.PushImage(t, "library/app", "v1", 64<<10, 2)
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(hub)}})
	sk := clients.NewSkopeo(t)
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := clients.WriteRegistriesConf(conf, map[string]string{"docker.io": al.Host + "/dockerhub"}); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "img")
	if _, err := sk.CopyToDir(t.Context(), conf, "docker://docker.io/library/app:v1", dst); err != nil {
		t.Fatalf("skopeo copy through the airlock mirror: %v", err)
	}
	for _, b := range img.Blobs() {
		data, err := os.ReadFile(filepath.Join(dst, b.Hex))
		if err != nil || sha256Of(data) != b {
			t.Errorf("blob %s: %v, digest %s", b, err, sha256Of(data))
		}
	}
	raw, err := sk.Inspect(t.Context(), "docker://"+al.Host+"/dockerhub/library/app:v1")
	if err != nil {
		t.Fatalf("skopeo inspect: %v", err)
	}
	if raw != string(img.Manifest) {
		t.Fatalf("inspected manifest differs from upstream's:\n%s", raw)
	}
}
