package clients_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// These tests prove each client driver against a plain test upstream with
// no airlock in between, so a failure through airlock is airlock's.

func TestContainerdPullsDirect(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	single := up.PushImage(t, "library/app", "v1", 32<<10, 2)
	multi := up.PushIndex(t, "library/multi", "v1", 16<<10, 1)
	ctd := clients.StartContainerd(t)
	hosts := t.TempDir()
	if err := clients.WriteHostsDir(hosts, map[string]string{"docker.io": up.URL}); err != nil {
		t.Fatal(err)
	}
	arm, _ := multi.Image("arm64")
	amd, _ := multi.Image("amd64")
	for _, tc := range []struct {
		name, ref, wantDigest string
		flags                 []string
		wantBlobs, notBlobs   []upstreamtest.Image
	}{
		{"single", "docker.io/library/app:v1", single.Digest.String(), nil, []upstreamtest.Image{single}, nil},
		{"one platform", "docker.io/library/multi:v1", multi.Digest.String(), []string{"--platform", "linux/arm64"}, []upstreamtest.Image{arm}, []upstreamtest.Image{amd}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ctd.Pull(t.Context(), hosts, tc.ref, tc.flags...); err != nil {
				t.Fatalf("pull: %v", err)
			}
			got, err := ctd.ImageDigest(t.Context(), tc.ref)
			if err != nil || got != tc.wantDigest {
				t.Fatalf("image digest = %q, %v; want %s", got, err, tc.wantDigest)
			}
			for _, img := range tc.wantBlobs {
				for _, b := range img.Blobs() {
					if n := up.BlobGETs(b); n != 1 {
						t.Errorf("upstream GETs of %s = %d, want 1", b, n)
					}
				}
			}
			for _, img := range tc.notBlobs {
				for _, b := range img.Blobs() {
					if n := up.BlobGETs(b); n != 0 {
						t.Errorf("upstream GETs of other platform's %s = %d, want 0", b, n)
					}
				}
			}
		})
	}
}

func TestDockerdPullsDirect(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "v1", 32<<10, 2)
	ctd := clients.StartContainerd(t)
	dkd := clients.StartDockerd(t, ctd, up.URL)
	for _, tc := range []struct{ name, ref string }{
		{"by host", up.Host + "/library/app:v1"},
		{"through registry-mirror", "library/app:v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := up.Count(upstreamtest.RegistryListener, "HEAD", "/manifests/v1")
			if _, err := dkd.Pull(t.Context(), tc.ref); err != nil {
				t.Fatalf("pull: %v", err)
			}
			if up.Count(upstreamtest.RegistryListener, "HEAD", "/manifests/v1") <= before {
				t.Fatalf("the pull did not reach the upstream: %+v", up.Requests())
			}
			digests, err := dkd.RepoDigests(t.Context(), tc.ref)
			if err != nil || len(digests) == 0 || !strings.HasSuffix(digests[0], "@"+img.Digest.String()) {
				t.Fatalf("repo digests = %v, %v; want one ending in %s", digests, err, img.Digest)
			}
		})
	}
}

func TestSkopeoCopiesDirect(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "v1", 32<<10, 2)
	sk := clients.NewSkopeo(t)
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := clients.WriteRegistriesConf(conf, map[string]string{"docker.io": up.Host}); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "img")
	if _, err := sk.CopyToDir(t.Context(), conf, "docker://docker.io/library/app:v1", dst); err != nil {
		t.Fatalf("copy through mirror: %v", err)
	}
	for _, b := range img.Blobs() {
		if _, err := os.Stat(filepath.Join(dst, b.Hex)); err != nil {
			t.Errorf("blob %s not copied: %v", b, err)
		}
	}
	raw, err := sk.Inspect(t.Context(), "docker://"+up.Host+"/library/app:v1")
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	var m struct{ Config struct{ Digest string } }
	if err := json.Unmarshal([]byte(raw), &m); err != nil || m.Config.Digest != img.Config.String() {
		t.Fatalf("inspected config = %q, %v; want %s", m.Config.Digest, err, img.Config)
	}
}
