package notationtest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/verify/notation"
	"github.com/airlock-registry/airlock/verify/notation/notationtest"
)

// TestPushIsListedByReferrers pushes a signature next to an image, finds
// it through the registry's referrers API by its artifactType, reads the
// manifest and envelope back over HTTP and verifies them.
func TestPushIsListedByReferrers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		auth      upstreamtest.Auth
		mediaType string
	}{
		{upstreamtest.Plain, notation.MediaTypeJWS},
		{upstreamtest.Plain, notation.MediaTypeCOSE},
		{upstreamtest.DockerHubStyle, notation.MediaTypeJWS},
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.auth, tc.mediaType), func(t *testing.T) {
			t.Parallel()
			u := upstreamtest.New(t, upstreamtest.Options{Auth: tc.auth})
			img := u.PushImage(t, "library/app", "v1", 512, 1)
			subject := descriptorOf(t, img)
			sig, pki := notationtest.Sign(t, subject, tc.mediaType)
			desc := notationtest.Push(t, u, "library/app", sig)

			c := client{t: t, u: u, repo: "library/app"}
			var index ocispec.Index
			c.getJSON("/referrers/"+subject.Digest.String()+"?artifactType="+url.QueryEscape(notationtest.ArtifactType), &index)
			if len(index.Manifests) != 1 {
				t.Fatalf("referrers of %s list %d manifests, want the signature: %+v", subject.Digest, len(index.Manifests), index.Manifests)
			}
			got := index.Manifests[0]
			if got.Digest != desc.Digest || got.ArtifactType != notationtest.ArtifactType || got.MediaType != ocispec.MediaTypeImageManifest {
				t.Fatalf("referrer %+v, want %s of artifactType %s", got, desc.Digest, notationtest.ArtifactType)
			}
			// The reference registry ignores the artifactType filter (it sends
			// no OCI-Filters-Applied header), so readers of its referrers
			// must filter by the listed artifactType themselves, as the
			// distribution spec allows.

			var m ocispec.Manifest
			c.getJSON("/manifests/"+desc.Digest.String(), &m)
			if m.Config.MediaType != notationtest.ArtifactType || m.Config.Digest != ocispec.DescriptorEmptyJSON.Digest ||
				len(m.Layers) != 1 || m.Layers[0].MediaType != tc.mediaType || m.Subject == nil || m.Subject.Digest != subject.Digest {
				t.Fatalf("signature manifest %+v is not a Notation signature of %s", m, subject.Digest)
			}
			if b := c.get("/blobs/" + m.Config.Digest.String()); string(b) != "{}" {
				t.Fatalf("config blob %q, want {}", b)
			}
			envelope := c.get("/blobs/" + m.Layers[0].Digest.String())

			v, err := notation.New(config.NotationTrust{TrustStore: []string{pki.WriteCA(t)}, TrustedIdentities: []string{pki.Identity()}}, os.ReadFile)
			if err != nil {
				t.Fatal(err)
			}
			id, err := v.Verify(t.Context(), envelope, m.Layers[0].MediaType, *m.Subject)
			if err != nil {
				t.Fatalf("verify the pushed signature: %v", err)
			}
			if id != pki.Leaf.Subject.String() {
				t.Fatalf("identity %q, want %q", id, pki.Leaf.Subject)
			}
		})
	}
}

func descriptorOf(t *testing.T, img upstreamtest.Image) ocispec.Descriptor {
	t.Helper()
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.Digest(img.Digest.String()), Size: int64(len(img.Manifest))}
}

// client reads one repository of an Upstream over HTTP, fetching a pull
// token first when the upstream demands one.
type client struct {
	t     *testing.T
	u     *upstreamtest.Upstream
	repo  string
	token string
}

func (c *client) get(path string) []byte {
	c.t.Helper()
	if c.token == "" && c.u.TokenURL != "" {
		var tok struct{ Token string }
		c.fetchJSON(c.u.TokenURL+"/token?service=registry.test&scope=repository:"+c.repo+":pull", "", &tok)
		c.token = tok.Token
	}
	return c.fetch(c.u.URL+"/v2/"+c.repo+path, c.token)
}

func (c *client) getJSON(path string, v any) {
	c.t.Helper()
	if err := json.Unmarshal(c.get(path), v); err != nil {
		c.t.Fatalf("%s: %v", path, err)
	}
}

func (c *client) fetchJSON(u, token string, v any) {
	c.t.Helper()
	if err := json.Unmarshal(c.fetch(u, token), v); err != nil {
		c.t.Fatalf("%s: %v", u, err)
	}
}

func (c *client) fetch(u, token string) []byte {
	c.t.Helper()
	req, err := http.NewRequestWithContext(c.t.Context(), http.MethodGet, u, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	// The Upstream redirects blob GETs to its CDN, which refuses
	// credentials: drop them when following the redirect.
	cl := &http.Client{CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		r.Header.Del("Authorization")
		return nil
	}}
	resp, err := cl.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	return b
}
