package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestTamperedUpstream makes the upstream serve altered bytes for a layer
// or for the manifest: containerd's pull through airlock must fail, and
// after the upstream is honest again a second pull must succeed with bytes
// fetched anew — proof that nothing of the bad transfer was kept.
func TestTamperedUpstream(t *testing.T) {
	t.Parallel()
	ctd := clients.StartContainerd(t)
	for _, tc := range []struct {
		name   string
		target func(upstreamtest.Image) v1.Hash
	}{
		{"layer", func(i upstreamtest.Image) v1.Hash { return i.Layers[1] }},
		{"manifest", func(i upstreamtest.Image) v1.Hash { return i.Digest }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hub := upstreamtest.New(t, upstreamtest.Options{})
			img := hub.PushImage(t, "library/app", "v1", 256<<10, 2)
			al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(hub)}})
			hosts := t.TempDir()
			if err := clients.WriteHostsDir(hosts, map[string]string{"docker.io": al.URL}); err != nil {
				t.Fatal(err)
			}
			bad := tc.target(img)
			hub.Tamper(bad)
			// A distinct name per subtest: containerd's store is shared.
			ref := "docker.io/library/app:v1"
			if _, err := ctd.Ctr(t.Context(), "--namespace", "tamper-"+tc.name, "images", "pull", "--hosts-dir", hosts, ref); err == nil {
				t.Fatal("pull of a tampered image succeeded")
			}
			// The direct route must refuse the bad bytes too.
			path := "/blobs/"
			if bad == img.Digest {
				path = "/manifests/"
			}
			r, err := e2eGet(t.Context(), al.URL+"/v2/dockerhub/library/app"+path+bad.String(), "Accept", manifestAccept)
			if err == nil && r.Status == http.StatusOK && sha256Of(r.Body) != bad {
				// A streamed blob may start with 200; then the body must
				// end short or the connection must break, never complete.
				t.Fatalf("airlock served %d altered bytes for %s as complete", len(r.Body), bad)
			}
			before := hub.Count(upstreamtest.RegistryListener, http.MethodGet, bad.String())
			hub.Untamper(bad)
			// A fresh namespace: containerd keeps the partial ingest of the
			// failed pull and would resume it, altered bytes included.
			if _, err := ctd.Ctr(t.Context(), "--namespace", "retry-"+tc.name, "images", "pull", "--hosts-dir", hosts, ref); err != nil {
				t.Fatalf("pull after the upstream was fixed: %v", err)
			}
			if after := hub.Count(upstreamtest.RegistryListener, http.MethodGet, bad.String()); after <= before {
				t.Fatalf("airlock did not fetch %s again after the tampered transfer (GETs %d -> %d): it kept bad bytes", bad, before, after)
			}
			e2ePullHTTP(t, hub, al.URL+"/v2/dockerhub/library/app", img.Digest.String(), img)
		})
	}
}

// TestConcurrentColdPulls sends 16 simultaneous GETs of every blob of a
// cold image through airlock, with a slow upstream so they overlap: every
// client gets every byte, and the upstream sees exactly one GET per blob.
func TestConcurrentColdPulls(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t, upstreamtest.Options{})
	img := hub.PushImage(t, "library/app", "v1", 1<<20, 3)
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(hub)}})
	hub.Delay(200 * time.Millisecond)
	hub.Throttle(4 << 20)
	const clientsPerBlob = 16
	var wg sync.WaitGroup
	errs := make(chan error, clientsPerBlob*len(img.Blobs()))
	for _, d := range img.Blobs() {
		for range clientsPerBlob {
			wg.Go(func() {
				r, err := e2eGet(t.Context(), al.URL+"/v2/library/app/blobs/"+d.String())
				switch {
				case err != nil:
					errs <- fmt.Errorf("blob %s: %w", d, err)
				case r.Status != http.StatusOK:
					errs <- fmt.Errorf("blob %s: status %d: %.200s", d, r.Status, r.Body)
				case sha256Of(r.Body) != d:
					errs <- fmt.Errorf("blob %s: got %d bytes with digest %s", d, len(r.Body), sha256Of(r.Body))
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, d := range img.Blobs() {
		if n := hub.BlobGETs(d); n != 1 {
			t.Errorf("upstream GETs of %s = %d for %d concurrent clients, want 1", d, n, clientsPerBlob)
		}
	}
}

// TestUpstreamDownServesCache warms the cache, lets the tag's TTL pass and
// takes the upstream down: the image must still pull by digest and by tag,
// and airlock must say it served a stale tag.
func TestUpstreamDownServesCache(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t, upstreamtest.Options{})
	img := hub.PushImage(t, "library/app", "v1", 64<<10, 2)
	al := e2eStart(t, airlocktest.Config{TagTTL: "1s", Upstreams: []airlocktest.Upstream{e2eDockerHub(hub)}})
	base := al.URL + "/v2/dockerhub/library/app"
	e2ePullHTTP(t, hub, base, "v1", img)
	time.Sleep(1500 * time.Millisecond)
	hub.Down()
	for _, ref := range []string{img.Digest.String(), "v1"} {
		t.Run("by "+ref, func(t *testing.T) {
			e2ePullHTTP(t, hub, base, ref, img)
		})
	}
	if _, err := al.WaitLog(t.Context(), func(l airlocktest.LogLine) bool {
		return strings.Contains(strings.ToLower(l.Raw), "stale")
	}); err != nil {
		t.Errorf("airlock never logged that it served a stale tag: %v", err)
	}
	ctd := clients.StartContainerd(t)
	hosts := t.TempDir()
	if err := clients.WriteHostsDir(hosts, map[string]string{"docker.io": al.URL}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctd.Pull(t.Context(), hosts, "docker.io/library/app:v1"); err != nil {
		t.Fatalf("containerd pull from cache while the upstream is down: %v", err)
	}
}

// TestRangeOnColdBlob asks for a byte range of a blob airlock has never
// seen and expects exactly those bytes with 206.
func TestRangeOnColdBlob(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t, upstreamtest.Options{})
	img := hub.PushImage(t, "library/app", "v1", 256<<10, 1)
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(hub)}})
	layer := img.Layers[0]
	want := hub.Blob(t, layer)
	for _, tc := range []struct {
		header     string
		start, end int // inclusive
	}{
		{"bytes=1000-1999", 1000, 1999},
		{fmt.Sprintf("bytes=%d-", len(want)-100), len(want) - 100, len(want) - 1},
	} {
		t.Run(tc.header, func(t *testing.T) {
			r := e2eMustGet(t, http.StatusPartialContent, al.URL+"/v2/dockerhub/library/app/blobs/"+layer.String(), "Range", tc.header)
			if !bytes.Equal(r.Body, want[tc.start:tc.end+1]) {
				t.Fatalf("range %s: got %d bytes, not the upstream's bytes %d-%d", tc.header, len(r.Body), tc.start, tc.end)
			}
			wantCR := fmt.Sprintf("bytes %d-%d/%d", tc.start, tc.end, len(want))
			if cr := r.Header.Get("Content-Range"); cr != wantCR {
				t.Errorf("Content-Range = %q, want %q", cr, wantCR)
			}
		})
	}
}

// TestRefusalsNeverReachUpstream asks for what airlock must refuse — a
// repository outside the allow-list, an unknown upstream prefix, an unknown
// ns — and expects an OCI error and no upstream request at all.
func TestRefusalsNeverReachUpstream(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t, upstreamtest.Options{})
	hub.PushImage(t, "library/app", "v1", 1024, 1)
	hub.PushImage(t, "private/app", "v1", 1024, 1)
	up := e2eDockerHub(hub)
	up.Repositories = []string{"library/*"}
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{up}})
	for _, tc := range []struct {
		name, path string
		codes      []string
	}{
		{"repository outside the allow-list by prefix", "/v2/dockerhub/private/app/manifests/v1", []string{"DENIED"}},
		{"repository outside the allow-list by default", "/v2/private/app/manifests/v1", []string{"DENIED"}},
		{"repository outside the allow-list by ns", "/v2/private/app/manifests/v1?ns=docker.io", []string{"DENIED"}},
		{"unknown upstream prefix", "/v2/nosuch/library/app/manifests/v1", []string{"NAME_UNKNOWN", "DENIED"}},
		{"unknown ns", "/v2/library/app/manifests/v1?ns=quay.io", []string{"NAME_UNKNOWN", "DENIED"}},
		// A loopback host that is not in the config: airlock must not dial it.
		{"ns naming an unconfigured host", "/v2/library/app/blobs/sha256:" + strings.Repeat("a", 64) + "?ns=127.0.0.1:9", []string{"NAME_UNKNOWN", "DENIED"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := hub.Total()
			r, err := e2eGet(t.Context(), al.URL+tc.path, "Accept", manifestAccept)
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != http.StatusForbidden && r.Status != http.StatusNotFound {
				t.Errorf("status %d, want 403 or 404; body %.300s", r.Status, r.Body)
			}
			codes := e2eErrorCodes(r.Body)
			if len(codes) == 0 || !slices.Contains(tc.codes, codes[0]) {
				t.Errorf("error codes %v, want one of %v; body %.300s", codes, tc.codes, r.Body)
			}
			if n := hub.Total() - before; n != 0 {
				t.Errorf("the refused request caused %d upstream requests: %+v", n, hub.Requests()[before:])
			}
		})
	}
}

// TestAuthenticatedUpstreams pulls through airlock from a Docker Hub style
// upstream (tokens, CDN redirects) and from a Basic-auth upstream whose
// credentials airlock reads from files.
func TestAuthenticatedUpstreams(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		opts       upstreamtest.Options
		user, pass string // written to files for airlock; empty: no auth block
		wantOK     bool
	}{
		{"dockerhub style anonymous", upstreamtest.Options{Auth: upstreamtest.DockerHubStyle}, "", "", true},
		{"dockerhub style with credentials", upstreamtest.Options{Auth: upstreamtest.DockerHubStyle, Username: "bot", Password: "s3cret"}, "bot", "s3cret", true},
		{"basic", upstreamtest.Options{Auth: upstreamtest.Basic, Username: "bot", Password: "s3cret"}, "bot", "s3cret", true},
		{"basic with a wrong password", upstreamtest.Options{Auth: upstreamtest.Basic, Username: "bot", Password: "s3cret"}, "bot", "wrong", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := upstreamtest.New(t, tc.opts)
			img := up.PushImage(t, "vendor/app", "v1", 128<<10, 2)
			entry := airlocktest.Upstream{Name: "vendor", URL: up.URL, Aliases: []string{"registry.vendor.test"}, Retry: airlocktest.FastRetry()}
			if tc.user != "" {
				dir := t.TempDir()
				entry.Auth = &airlocktest.Auth{UsernameFile: filepath.Join(dir, "user"), PasswordFile: filepath.Join(dir, "pass")}
				// A trailing newline, as editors and secret mounts leave it.
				for f, v := range map[string]string{entry.Auth.UsernameFile: tc.user, entry.Auth.PasswordFile: tc.pass} {
					if err := os.WriteFile(f, []byte(v+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{entry}})
			base := al.URL + "/v2/vendor/vendor/app"
			if !tc.wantOK {
				r, err := e2eGet(t.Context(), base+"/manifests/v1", "Accept", manifestAccept)
				if err != nil {
					t.Fatal(err)
				}
				if r.Status == http.StatusOK {
					t.Fatal("airlock served an image it could not have fetched with wrong credentials")
				}
				if strings.Contains(string(r.Body), tc.pass) || strings.Contains(strings.Join(logRaw(al), "\n"), tc.opts.Password) {
					t.Error("a password appears in airlock's response or log")
				}
				return
			}
			e2ePullHTTP(t, up, base, "v1", img)
			if v := up.Violations(); len(v) != 0 {
				t.Errorf("upstream protocol violations: %v", v)
			}
			for _, d := range img.Layers {
				if tc.opts.Auth == upstreamtest.DockerHubStyle && up.CDNGETs(d) != 1 {
					t.Errorf("CDN GETs of %s = %d, want 1", d, up.CDNGETs(d))
				}
			}
			if strings.Contains(strings.Join(logRaw(al), "\n"), tc.opts.Password+"\"") && tc.opts.Password != "" {
				t.Error("the upstream password appears in airlock's log")
			}
		})
	}
}

// TestKillDuringDownload kills airlock with SIGKILL while it streams a
// large blob from a slow upstream, restarts it on the same data directory
// and expects the store to open and the next pull to give correct bytes.
func TestKillDuringDownload(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t, upstreamtest.Options{})
	img := hub.PushImage(t, "library/big", "v1", 8<<20, 1)
	layer := img.Layers[0]
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(hub)}})
	hub.Throttle(2 << 20)
	url := al.URL + "/v2/dockerhub/library/big/blobs/" + layer.String()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = e2eGet(ctx, url)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for hub.BytesServed() < 1<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream transfer never got under way (%d bytes served)", hub.BytesServed())
		}
		time.Sleep(20 * time.Millisecond)
	}
	al.Kill()
	<-done
	hub.Throttle(0)
	al.Restart(t)
	r := e2eMustGet(t, http.StatusOK, url)
	if sha256Of(r.Body) != layer {
		t.Fatalf("after a crash mid-download airlock served %d bytes with digest %s, want %s", len(r.Body), sha256Of(r.Body), layer)
	}
	// And once more, now from whatever the restarted airlock kept.
	if r := e2eMustGet(t, http.StatusOK, url); sha256Of(r.Body) != layer {
		t.Fatalf("second pull after restart has digest %s", sha256Of(r.Body))
	}
}

func logRaw(al *airlocktest.Airlock) []string {
	var out []string
	for _, l := range al.Logs() {
		out = append(out, l.Raw)
	}
	return out
}
