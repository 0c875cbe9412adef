package upstreamtest_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// TestPullEachAuthStyle pulls a seeded image with a real registry client
// through the styles it supports and checks what the upstream recorded.
func TestPullEachAuthStyle(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts upstreamtest.Options
		auth authn.Authenticator
	}{
		{upstreamtest.Options{}, authn.Anonymous},
		{upstreamtest.Options{Auth: upstreamtest.Basic, Username: "u", Password: "p"}, &authn.Basic{Username: "u", Password: "p"}},
	} {
		t.Run(tc.opts.Auth.String(), func(t *testing.T) {
			t.Parallel()
			up := upstreamtest.New(t, tc.opts)
			want := up.PushImage(t, "library/app", "v1", 4096, 2)
			if up.Total() != 0 {
				t.Fatalf("seeding was recorded: %d requests", up.Total())
			}
			ref, err := name.ParseReference(up.Host+"/library/app:v1", name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := remote.Image(ref, remote.WithContext(t.Context()), remote.WithAuth(tc.auth))
			if err != nil {
				t.Fatalf("pull: %v", err)
			}
			if err := validate.Image(img, validate.Fast); err != nil {
				t.Fatalf("pulled image is not valid: %v", err)
			}
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			for i, l := range layers {
				rc, err := l.Compressed()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					t.Fatalf("layer %d: %v", i, err)
				}
				rc.Close()
				if got := up.BlobGETs(want.Layers[i]); got != 1 {
					t.Errorf("BlobGETs(layer %d) = %d, want 1", i, got)
				}
			}
			cfg, err := img.ConfigFile()
			if err != nil || cfg.Architecture != "amd64" || cfg.OS != "linux" || len(cfg.RootFS.DiffIDs) != 2 {
				t.Errorf("config = %+v, %v; want linux/amd64 with 2 diff_ids", cfg, err)
			}
		})
	}
}

// TestDockerHubStyleFlow walks the token handshake and the CDN redirect by
// hand, as a careful client does, and checks nothing leaked to the CDN.
func TestDockerHubStyleFlow(t *testing.T) {
	t.Parallel()
	for _, user := range []string{"", "u"} {
		t.Run("user="+user, func(t *testing.T) {
			t.Parallel()
			up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.DockerHubStyle, Username: user, Password: "p"})
			img := up.PushImage(t, "library/app", "v1", 4096, 1)
			first := get(t, up.URL+"/v2/library/app/manifests/v1", "")
			ch := first.Header.Get("WWW-Authenticate")
			if first.StatusCode != http.StatusUnauthorized || !strings.Contains(ch, up.TokenURL) {
				t.Fatalf("got %d %q, want 401 naming the token endpoint", first.StatusCode, ch)
			}
			tokReq, _ := http.NewRequestWithContext(t.Context(), http.MethodGet,
				up.TokenURL+"/token?service=registry.test&scope=repository:library/app:pull", nil)
			if user != "" {
				tokReq.SetBasicAuth(user, "p")
			}
			resp, err := http.DefaultClient.Do(tokReq)
			if err != nil {
				t.Fatal(err)
			}
			var tok struct{ Token string }
			err = json.NewDecoder(resp.Body).Decode(&tok)
			resp.Body.Close()
			if err != nil || tok.Token == "" {
				t.Fatalf("token: %d %v", resp.StatusCode, err)
			}
			if m := readAll(t, get(t, up.URL+"/v2/library/app/manifests/v1", "Bearer "+tok.Token)); !bytes.Equal(m, img.Manifest) {
				t.Fatal("manifest differs")
			}
			if r := get(t, up.URL+"/v2/other/manifests/v1", "Bearer "+tok.Token); r.StatusCode != http.StatusUnauthorized {
				t.Fatalf("token for library/app opened other: %d", r.StatusCode)
			}
			noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			blobReq, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, up.URL+"/v2/library/app/blobs/"+img.Layers[0].String(), nil)
			blobReq.Header.Set("Authorization", "Bearer "+tok.Token)
			redir, err := noFollow.Do(blobReq)
			if err != nil {
				t.Fatal(err)
			}
			redir.Body.Close()
			loc := redir.Header.Get("Location")
			if redir.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, up.CDNURL) {
				t.Fatalf("blob GET: %d to %q, want 307 to the CDN", redir.StatusCode, loc)
			}
			if b := readAll(t, get(t, loc, "")); !bytes.Equal(b, up.Blob(t, img.Layers[0])) {
				t.Fatal("CDN bytes differ")
			}
			if up.BlobGETs(img.Layers[0]) != 1 || up.CDNGETs(img.Layers[0]) != 1 {
				t.Errorf("BlobGETs=%d CDNGETs=%d, want 1 and 1", up.BlobGETs(img.Layers[0]), up.CDNGETs(img.Layers[0]))
			}
			if v := up.Violations(); len(v) != 0 {
				t.Errorf("violations: %v", v)
			}
		})
	}
}

// TestUnauthenticatedIsChallenged checks that protected styles refuse a
// request without credentials and say how to authenticate.
func TestUnauthenticatedIsChallenged(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts upstreamtest.Options
		want string
	}{
		{upstreamtest.Options{Auth: upstreamtest.Basic, Username: "u", Password: "p"}, "Basic "},
		{upstreamtest.Options{Auth: upstreamtest.DockerHubStyle}, `scope="repository:library/app:pull"`},
	} {
		t.Run(tc.opts.Auth.String(), func(t *testing.T) {
			t.Parallel()
			up := upstreamtest.New(t, tc.opts)
			img := up.PushImage(t, "library/app", "v1", 128, 1)
			resp := get(t, up.URL+"/v2/library/app/manifests/"+img.Digest.String(), "")
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), tc.want) {
				t.Fatalf("got %d %q, want 401 with challenge containing %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), tc.want)
			}
		})
	}
}

// TestCDNRefusesCredentials sends a token to the CDN, as a careless client
// following the redirect would, and expects a refusal and a violation.
func TestCDNRefusesCredentials(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.DockerHubStyle})
	img := up.PushImage(t, "library/app", "v1", 128, 1)
	resp := get(t, up.CDNURL+"/library/app/blobs/"+img.Layers[0].String(), "Bearer leaked")
	if resp.StatusCode == http.StatusOK {
		t.Fatal("CDN served a request carrying credentials")
	}
	if v := up.Violations(); len(v) != 1 || !strings.Contains(v[0], "leaked") {
		t.Fatalf("violations = %v, want one naming the leaked token", v)
	}
	resp = get(t, up.CDNURL+"/library/app/blobs/"+img.Layers[0].String(), "")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, up.Blob(t, img.Layers[0])) {
		t.Fatalf("CDN without credentials: %d, %d bytes", resp.StatusCode, len(body))
	}
}

// TestKnobs checks Tamper, Down/Up, Throttle and Delay on a plain upstream.
func TestKnobs(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "v1", 64<<10, 1)
	layer := img.Layers[0]
	want := up.Blob(t, layer)
	blobURL := up.URL + "/v2/library/app/blobs/" + layer.String()

	up.Tamper(layer)
	got := readAll(t, get(t, blobURL, ""))
	if len(got) != len(want) || bytes.Equal(got, want) {
		t.Fatalf("tampered blob: %d bytes, equal=%v; want %d altered bytes", len(got), bytes.Equal(got, want), len(want))
	}
	up.Tamper(img.Digest)
	if m := readAll(t, get(t, up.URL+"/v2/library/app/manifests/v1", "")); bytes.Equal(m, img.Manifest) || len(m) != len(img.Manifest) {
		t.Fatal("manifest fetched by tag was not tampered")
	}
	up.Untamper(layer)
	up.Untamper(img.Digest)
	if got := readAll(t, get(t, blobURL, "")); !bytes.Equal(got, want) {
		t.Fatal("untampered blob differs")
	}

	up.Down()
	if resp, err := http.Get(blobURL); err == nil {
		resp.Body.Close()
		t.Fatalf("upstream is down but answered %d", resp.StatusCode)
	}
	up.Up()
	readAll(t, get(t, blobURL, ""))

	up.Throttle(int64(len(want)) * 4) // a quarter of a second for the blob
	start := time.Now()
	readAll(t, get(t, blobURL, ""))
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("throttled transfer took %v, want at least 200ms", took)
	}
	up.Throttle(0)
	up.Delay(300 * time.Millisecond)
	start = time.Now()
	readAll(t, get(t, up.URL+"/v2/", ""))
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("delayed request took %v, want at least 300ms", took)
	}
	if up.BytesServed() < int64(3*len(want)) {
		t.Errorf("BytesServed = %d, want at least %d", up.BytesServed(), 3*len(want))
	}
}

// TestIndex checks the seeded manifest list carries both platforms.
func TestIndex(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	x := up.PushIndex(t, "library/multi", "v1", 1024, 1)
	ref, _ := name.ParseReference(up.Host+"/library/multi:v1", name.Insecure)
	idx, err := remote.Index(ref, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("index not valid: %v", err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 2 {
		t.Fatalf("%d manifests, want 2", len(im.Manifests))
	}
	for i, arch := range []string{"amd64", "arm64"} {
		img, ok := x.Image(arch)
		if !ok || im.Manifests[i].Digest != img.Digest || im.Manifests[i].Platform.Architecture != arch {
			t.Errorf("manifest %d = %+v, want %s image %s", i, im.Manifests[i], arch, img.Digest)
		}
	}
}

func get(t *testing.T, url, authorization string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readAll(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("read: %d %v", resp.StatusCode, err)
	}
	return b
}
