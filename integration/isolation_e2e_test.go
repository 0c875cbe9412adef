package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// TestVendorContentUnreachableThroughPublicUpstream runs airlock in front of
// a public, anonymous upstream and a vendor's upstream that demands
// credentials. Once the vendor's image is cached, a repository on the public
// upstream whose manifest lists the vendor's layers and manifest reads none
// of them, by any route a client can take: by digest on the prefixed and
// the ?ns= route, through the foreign manifest's references (skopeo pulling
// the whole image), by digest as a manifest, along a running fill, and with
// the public upstream down.
func TestVendorContentUnreachableThroughPublicUpstream(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t, upstreamtest.Options{})
	vendor := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.Basic, Username: "bot", Password: "s3cret"})
	secret := vendor.PushImage(t, "secret/app", "v1", 128<<10, 2)
	later := vendor.PushImage(t, "secret/app", "v2", 4<<20, 1) // pulled while a public client asks for it

	dir := t.TempDir()
	auth := &airlocktest.Auth{UsernameFile: filepath.Join(dir, "user"), PasswordFile: filepath.Join(dir, "pass")}
	for f, v := range map[string]string{auth.UsernameFile: "bot", auth.PasswordFile: "s3cret"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{
		e2eDockerHub(hub),
		{Name: "vendor", URL: vendor.URL, Aliases: []string{"registry.vendor.test"}, Auth: auth, Retry: airlocktest.FastRetry()},
	}})
	e2ePullHTTP(t, vendor, al.URL+"/v2/vendor/secret/app", "v1", secret)

	// The public repository's manifest names the vendor's digests as its own.
	digests := append(secret.Blobs(), secret.Digest)
	evil := hostileImageManifest(t, digests)
	pushRawManifest(t, hub.URL, "library/evil", "v1", evil)
	e2eMustGet(t, http.StatusOK, al.URL+"/v2/dockerhub/library/evil/manifests/v1", "Accept", manifestAccept)

	refused := func(label string, ds []v1.Hash) {
		t.Helper()
		for _, d := range ds {
			for _, path := range []string{
				"/v2/dockerhub/library/evil/blobs/" + d.String(),
				"/v2/library/evil/blobs/" + d.String() + "?ns=docker.io",
				"/v2/library/evil/blobs/" + d.String(),
				"/v2/dockerhub/library/evil/manifests/" + d.String(),
				"/v2/library/evil/manifests/" + d.String() + "?ns=docker.io",
			} {
				for _, method := range []string{http.MethodGet, http.MethodHead} {
					req, _ := http.NewRequestWithContext(t.Context(), method, al.URL+path, nil)
					req.Header.Set("Accept", manifestAccept)
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						continue // a broken transfer serves nothing
					}
					var body bytes.Buffer
					_, _ = body.ReadFrom(resp.Body)
					resp.Body.Close()
					if resp.StatusCode < 400 {
						t.Errorf("%s: %s %s = %d: vendor content served through the public upstream", label, method, path, resp.StatusCode)
					}
					if body.Len() > 0 && sha256Of(body.Bytes()) == d {
						t.Errorf("%s: %s %s returned the vendor's bytes", label, method, path)
					}
				}
			}
		}
	}
	refused("online", digests)

	// A real client pulling the public image through airlock gets none of
	// the vendor's layers.
	skopeo := clients.NewSkopeo(t)
	if out, err := skopeo.CopyToDir(t.Context(), "", "docker://"+al.Host+"/dockerhub/library/evil:v1", t.TempDir(), "--src-tls-verify=false"); err == nil {
		t.Fatalf("skopeo copied the public image whose layers are the vendor's:\n%s", out)
	}

	// Along a running fill: the vendor's new layer trickles in while a
	// public client asks for the same digest.
	vendor.Throttle(1 << 20)
	var wg sync.WaitGroup
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		r, err := e2eGet(ctx, al.URL+"/v2/vendor/secret/app/blobs/"+later.Layers[0].String())
		if err != nil || r.Status != http.StatusOK {
			t.Errorf("vendor pull of its own layer: %v %d", err, r.Status)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for vendor.BlobGETs(later.Layers[0]) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	refused("during the vendor's fill", later.Layers)
	wg.Wait()
	vendor.Throttle(0)

	hub.Down()
	refused("public upstream down", append(digests, later.Layers...))
	hub.Up()

	// The vendor's own clients still get everything, from the cache.
	before := vendor.Total()
	e2ePullHTTP(t, vendor, al.URL+"/v2/vendor/secret/app", secret.Digest.String(), secret)
	if vendor.Total() != before {
		t.Errorf("the vendor's cached image went upstream again (%d requests)", vendor.Total()-before)
	}
	if leaks := hub.Requests(); strings.Contains(requestAuthz(leaks), "Basic") {
		t.Error("the vendor's credentials reached the public upstream")
	}
}

// hostileImageManifest is an OCI image manifest whose config and layers
// are the given digests (sizes are not checked by registries on push).
func hostileImageManifest(t *testing.T, ds []v1.Hash) []byte {
	t.Helper()
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	m := struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{SchemaVersion: 2, MediaType: "application/vnd.oci.image.manifest.v1+json",
		Config: desc{"application/vnd.oci.image.config.v1+json", ds[0].String(), 1}}
	for _, d := range ds[1:] {
		m.Layers = append(m.Layers, desc{"application/vnd.oci.image.layer.v1.tar+gzip", d.String(), 1})
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pushRawManifest PUTs body as repo:tag on a plain registry.
func pushRawManifest(t *testing.T, base, repo, tag string, body []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("pushing %s:%s: %d", repo, tag, resp.StatusCode)
	}
}

func requestAuthz(rs []upstreamtest.Request) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.Authorization)
	}
	return b.String()
}

// TestRepointedUpstreamConfirmsAgain: an operator points the upstream name
// "vendor" at another registry and reloads. What the previous registry
// vouched for is not served as the new one's: a cached manifest and layer
// it does not hold are refused, and a tag the old registry resolved is
// resolved again.
func TestRepointedUpstreamConfirmsAgain(t *testing.T) {
	t.Parallel()
	before, after := upstreamtest.New(t, upstreamtest.Options{}), upstreamtest.New(t, upstreamtest.Options{})
	img := before.PushImage(t, "team/app", "v1", 64<<10, 1)
	moved := after.PushImage(t, "team/app", "v1", 64<<10, 1) // the same tag, other content
	al := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{
		{Name: "vendor", URL: before.URL, Retry: airlocktest.FastRetry()},
	}})
	base := al.URL + "/v2/vendor/team/app"
	e2ePullHTTP(t, before, base, "v1", img)
	// The pull's fills record what the registry confirmed just after
	// serving; the repointing below must come after that, as it would for
	// any pull finished before an admin edits the configuration.
	for _, b := range img.Blobs() {
		if _, err := al.WaitLog(t.Context(), func(l airlocktest.LogLine) bool {
			return l.Msg() == "blob fill done" && l.Fields["digest"] == b.String()
		}); err != nil {
			t.Fatalf("fill of %s: %v", b, err)
		}
	}

	raw, err := os.ReadFile(al.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(al.ConfigPath, bytes.ReplaceAll(raw, []byte(before.URL), []byte(after.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := al.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if _, err := al.WaitLog(t.Context(), func(l airlocktest.LogLine) bool { return l.Msg() == "configuration reloaded" }); err != nil {
		t.Fatal(err)
	}
	if len(al.LogsContaining("now points at another registry")) == 0 {
		t.Error("the reload did not say the upstream moved")
	}
	for _, path := range []string{"/manifests/" + img.Digest.String(), "/blobs/" + img.Layers[0].String()} {
		r, err := e2eGet(t.Context(), base+path, "Accept", manifestAccept)
		if err != nil || r.Status != http.StatusNotFound {
			t.Errorf("GET %s after the upstream moved: %d %v; want 404 from the registry that answers now", path, r.Status, err)
		}
	}
	// The tag is the new registry's, within the old tag TTL.
	e2ePullHTTP(t, after, base, "v1", moved)
}
