package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/internal/s3test"
)

// The tests in this file run the built binary with its blobs in a bucket of
// a real S3 server (versitygw, internal/s3test). They run airlock as a
// process, not in-process: the AWS SDK behind the s3 driver may rewrite
// http.DefaultClient when a driver is created, which would race with the
// other tests of this package.

// s3Config is an airlock.yaml whose blobs live in the bucket params name.
func s3Config(t *testing.T, regAddr, upstreamURL string, params map[string]any) string {
	t.Helper()
	var p strings.Builder
	for _, k := range []string{"bucket", "region", "regionendpoint", "forcepathstyle", "accesskey", "secretkey"} {
		fmt.Fprintf(&p, "%s: %q, ", k, fmt.Sprint(params[k]))
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "airlock.yaml")
	doc := `
listen: "` + regAddr + `"
admin: {listen: "` + freeAddr(t) + `"}
storage:
  path: "` + filepath.Join(dir, "data") + `"
  driver: s3
  parameters: {` + strings.TrimSuffix(p.String(), ", ") + `}
shutdown: {drainTimeout: 5s}
upstreams:
  - {name: hub, url: "` + upstreamURL + `", default: true}
`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// serveProcess runs `airlock serve` until the test ends and waits until
// its registry listener answers.
func serveProcess(t *testing.T, config, regAddr string) {
	t.Helper()
	cmd := exec.Command(airlockBinary(t), "serve", "--config", config)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("airlock's output:\n%s", out.String())
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("airlock serve exited (%v)", err)
		default:
		}
		if resp, err := http.Get("http://" + regAddr + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("airlock serve did not answer /healthz within 30s")
		}
	}
}

// TestServeBlobsFromS3: airlock with storage.driver s3 fetches a layer
// once, commits it to the bucket, and serves it from there with the
// upstream down: by a redirect to a presigned URL on the S3 server, which
// a client follows without credentials. With the S3 server down it fails
// the request rather than fetch the layer again.
func TestServeBlobsFromS3(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	params := srv.Params(t)
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "vendor/app", "1", 64<<10, 1)
	layer := img.Layers[0]
	want := up.Blob(t, layer)

	regAddr := freeAddr(t)
	serveProcess(t, s3Config(t, regAddr, up.URL, params), regAddr)
	base := "http://" + regAddr + "/v2/vendor/app"
	get := func(client *http.Client, url string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		return resp, body
	}
	client := &http.Client{}
	if resp, body := get(client, base+"/manifests/1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest: %s: %s", resp.Status, body)
	}
	if resp, body := get(client, base+"/blobs/"+layer.String()); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("cold blob: %s, %d bytes; want 200 and the layer's %d", resp.Status, len(body), len(want))
	}

	// The commit follows the response: wait for the object.
	key := "blobs/sha256/" + layer.Hex[:2] + "/" + layer.Hex + "/data"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		got, err := srv.Object(t, params["bucket"].(string), key)
		if err == nil {
			if !bytes.Equal(got, want) {
				t.Fatalf("the bucket holds %d bytes at %s, not the layer", len(got), key)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			t.Fatalf("the layer never reached the bucket: %v", err)
		}
	}

	up.Down()
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, body := get(noFollow, base+"/blobs/"+layer.String())
	if resp.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("warm blob: %s: %s; want a redirect to the object store", resp.Status, body)
	}
	if loc, err := url.Parse(resp.Header.Get("Location")); err != nil || loc.Host != srv.Addr() ||
		loc.Query().Get("X-Amz-Signature") == "" {
		t.Fatalf("warm blob redirected to %q; want a presigned URL on %s", resp.Header.Get("Location"), srv.Addr())
	}
	if resp, body := get(client, base+"/blobs/"+layer.String()); resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		t.Fatalf("warm blob through the redirect: %s, %d bytes; want 200 and the layer", resp.Status, len(body))
	}
	if n := up.Count(upstreamtest.RegistryListener, http.MethodGet, "/blobs/"+layer.String()); n != 1 {
		t.Errorf("the upstream served the layer %d times; want once", n)
	}

	// With the object store down and the upstream back, the blob is not
	// taken for a miss: fetching it again is what a store that is down
	// must not cause, on every replica at once.
	up.Up()
	srv.Stop(t)
	resp, body = get(client, base+"/blobs/"+layer.String())
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(string(body), `"UNAVAILABLE"`) || !strings.Contains(string(body), "blob store is unavailable") {
		t.Errorf("warm blob with the object store down: %s (Retry-After %q): %s; want 503 UNAVAILABLE saying the blob store is unavailable",
			resp.Status, resp.Header.Get("Retry-After"), body)
	}
	if n := up.Count(upstreamtest.RegistryListener, http.MethodGet, "/blobs/"+layer.String()); n != 1 {
		t.Errorf("with the object store down the layer was fetched again: %d upstream GETs, want 1", n)
	}
}

// TestServeRefusesUnusableBucket: airlock does not start on a bucket it
// cannot use, and says why, naming the setting to check.
func TestServeRefusesUnusableBucket(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	for _, c := range []struct {
		name   string
		params map[string]any
		want   []string
	}{
		{"missing bucket", srv.ParamsFor("no-such-bucket"),
			[]string{"storage.driver s3", "s3aws object store failed", "NoSuchBucket", "check storage.parameters"}},
		// Port 1 (tcpmux) is privileged and never bound here.
		{"unreachable endpoint", func() map[string]any {
			p := srv.Params(t)
			p["regionendpoint"] = "http://127.0.0.1:1"
			return p
		}(), []string{"storage.driver s3", "s3aws object store is unreachable", "127.0.0.1:1", "connection refused", "check storage.parameters"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			// A serve that starts runs until killed: a minute is plenty
			// for one that refuses.
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, airlockBinary(t), "serve", "--config",
				s3Config(t, freeAddr(t), "http://127.0.0.1:1", c.params))
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("airlock serve started on an unusable bucket:\n%s", out)
			}
			if err == nil {
				t.Fatalf("airlock serve exited 0:\n%s", out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("airlock serve's error lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
