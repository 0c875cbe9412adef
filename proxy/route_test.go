package proxy

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseEndpoint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		path string
		want Endpoint
		code Code // expected error code, "" for success
	}{
		{"/v2/", Endpoint{Kind: KindBase}, ""},
		{"/v2", Endpoint{Kind: KindBase}, ""},
		{"/v2/_catalog", Endpoint{Kind: KindCatalog}, ""},
		{"/v2/library/nginx/manifests/1.27", Endpoint{KindManifest, "library/nginx", "1.27"}, ""},
		{"/v2/dockerhub/library/nginx/manifests/" + testDigest, Endpoint{KindManifest, "dockerhub/library/nginx", testDigest}, ""},
		{"/v2/a/blobs/" + testDigest, Endpoint{KindBlob, "a", testDigest}, ""},
		{"/v2/a/b/tags/list", Endpoint{KindTags, "a/b", ""}, ""},
		{"/v2/a/referrers/" + testDigest, Endpoint{KindReferrers, "a", testDigest}, ""},
		{"/v2/a/blobs/uploads/", Endpoint{KindUpload, "a", ""}, ""},
		{"/v2/a/blobs/uploads/1234-abcd", Endpoint{KindUpload, "a", ""}, ""},
		// Names may contain the endpoint words themselves.
		{"/v2/manifests/manifests/manifests/v1", Endpoint{KindManifest, "manifests/manifests", "v1"}, ""},
		{"/v2/blobs/tags/list", Endpoint{KindTags, "blobs", ""}, ""},
		{"/v2/a__b/c-d/e.f/manifests/latest", Endpoint{KindManifest, "a__b/c-d/e.f", "latest"}, ""},
		{"/v2/a---b/manifests/x", Endpoint{KindManifest, "a---b", "x"}, ""},

		{"/v2/Library/nginx/manifests/1", Endpoint{}, CodeNameInvalid},
		{"/v2/a//b/manifests/1", Endpoint{}, CodeNameInvalid},
		{"/v2/-a/manifests/1", Endpoint{}, CodeNameInvalid},
		{"/v2/a___b/manifests/1", Endpoint{}, CodeNameInvalid},
		{"/v2/a../manifests/1", Endpoint{}, CodeNameInvalid},
		{"/v2/a/manifests/-bad", Endpoint{}, CodeManifestInvalid},
		{"/v2/a/manifests/" + strings.Repeat("t", 129), Endpoint{}, CodeManifestInvalid},
		{"/v2/a/manifests/sha256:short", Endpoint{}, CodeDigestInvalid},
		{"/v2/a/blobs/latest", Endpoint{}, CodeDigestInvalid},
		{"/v2/a/blobs/md5:0123456789abcdef0123456789abcdef", Endpoint{}, CodeDigestInvalid},
		{"/v2/a/referrers/nope", Endpoint{}, CodeDigestInvalid},
		{"/v2/a/manifests/", Endpoint{}, CodeNotFound},
		{"/v2/a/other/x", Endpoint{}, CodeNotFound},
		{"/v3/a/manifests/x", Endpoint{}, CodeNotFound},
		{"/v2/" + strings.Repeat("a", 256) + "/manifests/x", Endpoint{}, CodeNameInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			got, err := ParseEndpoint(tc.path)
			if tc.code != "" {
				var e *Error
				if !errors.As(err, &e) || e.Code != tc.code {
					t.Fatalf("ParseEndpoint(%q) = %+v, %v; want error %s", tc.path, got, err, tc.code)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseEndpoint(%q) = %+v, %v; want %+v", tc.path, got, err, tc.want)
			}
		})
	}
}

func TestRouterRoute(t *testing.T) {
	t.Parallel()
	rt, err := NewRouter([]Upstream{
		{Name: "dockerhub", Hosts: []string{"registry-1.docker.io", "docker.io"}, Default: true, Library: true,
			Allowed: func(repo string) bool {
				return strings.HasPrefix(repo, "library/") || strings.HasPrefix(repo, "grafana/")
			}},
		{Name: "gcr", Hosts: []string{"gcr.io"}},
		{Name: "hcl", Hosts: []string{"hclcr.io", "127.0.0.1:5999"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, ns     string
		upstream     string
		repo         string
		code         Code
		namespaceOut string
	}{
		{name: "dockerhub/library/nginx", upstream: "dockerhub", repo: "library/nginx"},
		{name: "dockerhub/nginx", upstream: "dockerhub", repo: "library/nginx"},
		{name: "nginx", upstream: "dockerhub", repo: "library/nginx"},
		{name: "grafana/grafana", upstream: "dockerhub", repo: "grafana/grafana"},
		{name: "library/nginx", ns: "docker.io", upstream: "dockerhub", repo: "library/nginx", namespaceOut: "docker.io"},
		{name: "nginx", ns: "docker.io", upstream: "dockerhub", repo: "library/nginx", namespaceOut: "docker.io"},
		{name: "library/nginx", ns: "registry-1.docker.io", upstream: "dockerhub", repo: "library/nginx", namespaceOut: "registry-1.docker.io"},
		{name: "distroless/static", ns: "gcr.io", upstream: "gcr", repo: "distroless/static", namespaceOut: "gcr.io"},
		{name: "gcr/distroless/static", upstream: "gcr", repo: "distroless/static"},
		{name: "gcr/single", upstream: "gcr", repo: "single"}, // no library/ mapping off Docker Hub
		{name: "app/api", ns: "127.0.0.1:5999", upstream: "hcl", repo: "app/api", namespaceOut: "127.0.0.1:5999"},
		{name: "app/api", ns: "HCLCR.IO", upstream: "hcl", repo: "app/api", namespaceOut: "HCLCR.IO"},

		{name: "library/nginx", ns: "evil.example.com", code: CodeNameUnknown},
		{name: "gcr", code: CodeNameUnknown},
		{name: "someone/else", code: CodeDenied},
		{name: "dockerhub/someone/else", code: CodeDenied},
		{name: "someone/else", ns: "docker.io", code: CodeDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name+"?ns="+tc.ns, func(t *testing.T) {
			q := url.Values{}
			if tc.ns != "" {
				q.Set("ns", tc.ns)
			}
			r, err := rt.Route(Endpoint{Kind: KindManifest, Name: tc.name, Reference: "x"}, q)
			if tc.code != "" {
				var e *Error
				if !errors.As(err, &e) || e.Code != tc.code {
					t.Fatalf("Route = %+v, %v; want %s", r, err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Upstream.Name != tc.upstream || r.Repo != tc.repo || r.Namespace != tc.namespaceOut {
				t.Fatalf("Route = %s %s ns=%q; want %s %s ns=%q", r.Upstream.Name, r.Repo, r.Namespace, tc.upstream, tc.repo, tc.namespaceOut)
			}
		})
	}
}

func TestRouterWithoutDefault(t *testing.T) {
	t.Parallel()
	rt, err := NewRouter([]Upstream{{Name: "quay", Hosts: []string{"quay.io"}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = rt.Route(Endpoint{Kind: KindBlob, Name: "prometheus/node-exporter", Reference: testDigest}, nil)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeNameUnknown {
		t.Fatalf("un-prefixed name without a default upstream: got %v, want NAME_UNKNOWN", err)
	}
}

func TestNewRouterRejectsAmbiguity(t *testing.T) {
	t.Parallel()
	for _, ups := range [][]Upstream{
		{{Name: "a"}, {Name: "a"}},
		{{Name: "a", Hosts: []string{"x.io"}}, {Name: "b", Hosts: []string{"X.io"}}},
		{{Name: "a", Default: true}, {Name: "b", Default: true}},
	} {
		if _, err := NewRouter(ups); err == nil {
			t.Errorf("NewRouter(%+v) accepted an ambiguous table", ups)
		}
	}
}

func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"/v2/", "/v2/library/nginx/manifests/1.27", "/v2/a/blobs/" + testDigest,
		"/v2/a/tags/list", "/v2/a/referrers/" + testDigest, "/v2/a/blobs/uploads/x", "/v2/a/manifests/manifests/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		ep, err := ParseEndpoint(path)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Status < 400 || e.Status > 499 {
				t.Fatalf("ParseEndpoint(%q): error %v is not a 4xx OCI error", path, err)
			}
			return
		}
		switch ep.Kind {
		case KindManifest, KindBlob, KindTags, KindReferrers, KindUpload:
			if validateName(ep.Name) != nil {
				t.Fatalf("ParseEndpoint(%q) accepted invalid name %q", path, ep.Name)
			}
			if !strings.HasPrefix(path, "/v2/"+ep.Name+"/") {
				t.Fatalf("ParseEndpoint(%q): name %q is not the path's prefix", path, ep.Name)
			}
		}
		if ep.Kind == KindBlob || ep.Kind == KindReferrers {
			if _, err := parseDigest(ep.Reference); err != nil {
				t.Fatalf("ParseEndpoint(%q) accepted invalid digest %q", path, ep.Reference)
			}
		}
	})
}

// FuzzParseDigest holds the hand-written digest check to go-digest's own
// parser for the algorithms airlock accepts.
func FuzzParseDigest(f *testing.F) {
	f.Add(testDigest)
	f.Add("sha512:" + strings.Repeat("ab", 64))
	f.Add("sha256:" + strings.Repeat("A", 64))
	f.Add("md5:d41d8cd98f00b204e9800998ecf8427e")
	f.Fuzz(func(t *testing.T, s string) {
		_, err := parseDigest(s)
		d, perr := digest.Parse(s)
		want := perr == nil && (d.Algorithm() == digest.SHA256 || d.Algorithm() == digest.SHA512)
		if (err == nil) != want {
			t.Fatalf("parseDigest(%q) = %v, go-digest says valid=%v (%v)", s, err, want, perr)
		}
	})
}
