package upstream

import (
	"errors"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// recordAccept remembers the Accept values of manifest requests.
type recordAccept struct {
	next http.Handler
	mu   sync.Mutex
	seen [][]string
}

func (ra *recordAccept) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ra.mu.Lock()
	ra.seen = append(ra.seen, r.Header.Values("Accept"))
	ra.mu.Unlock()
	ra.next.ServeHTTP(w, r)
}

func TestManifestAccept(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		accept []string
		want   []string
	}{
		{name: "empty sends the full modern set", want: DefaultManifestAccept()},
		{name: "client list forwarded exactly", accept: []string{"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json;q=0.9"},
			want: []string{"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json;q=0.9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			ra := &recordAccept{next: inner}
			r := newClient(t, serve(t, ra).URL)
			if _, err := r.HeadManifest(t.Context(), "app", "v1", tt.accept); err != nil {
				t.Fatal(err)
			}
			desc, body, err := r.GetManifest(t.Context(), "app", s.digest, tt.accept)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, body)
			if desc.Digest.String() != s.digest || desc.Size != int64(len(s.manifest)) {
				t.Errorf("descriptor %+v", desc)
			}
			for i, got := range ra.seen {
				if !slices.Equal(got, tt.want) {
					t.Errorf("request %d sent Accept %q, want %q", i, got, tt.want)
				}
			}
		})
	}
}

// TestHeadManifestFallback: an upstream that omits Docker-Content-Digest on
// HEAD is resolved by GET, and the digest computed from the bytes.
func TestHeadManifestFallback(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	var gets atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			gets.Add(1)
		}
		inner.ServeHTTP(&dropDigest{ResponseWriter: w}, r)
	})
	r := newClient(t, serve(t, h).URL)
	desc, err := r.HeadManifest(t.Context(), "app", "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest.String() != s.digest || desc.Size != int64(len(s.manifest)) || gets.Load() != 1 {
		t.Errorf("descriptor %+v after %d GETs, want %s", desc, gets.Load(), s.digest)
	}
	if desc.MediaType == "" {
		t.Error("media type missing")
	}
	// GetManifest reports the missing header as an empty digest.
	desc, body, err := r.GetManifest(t.Context(), "app", "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, body)
	if desc.Digest != "" {
		t.Errorf("GetManifest digest %q, want empty", desc.Digest)
	}
}

// TestHeadManifestNotAllowed: an upstream that refuses HEAD on manifests
// (405 or 501) is resolved with one GET instead of failing the pull.
func TestHeadManifestNotAllowed(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusMethodNotAllowed, http.StatusNotImplemented} {
		inner := realRegistry(false)
		s := seed(t, inner, "app", "v1")
		var heads, gets atomic.Int64
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodHead {
				heads.Add(1)
				w.WriteHeader(status)
				return
			}
			gets.Add(1)
			inner.ServeHTTP(w, r)
		})
		r := newClient(t, serve(t, h).URL)
		desc, err := r.HeadManifest(t.Context(), "app", "v1", nil)
		if err != nil {
			t.Fatalf("HEAD answered %d: %v", status, err)
		}
		if desc.Digest.String() != s.digest || heads.Load() != 1 || gets.Load() != 1 {
			t.Errorf("HEAD answered %d: descriptor %+v after %d HEADs and %d GETs, want %s after 1 and 1",
				status, desc, heads.Load(), gets.Load(), s.digest)
		}
	}
}

// dropDigest removes Docker-Content-Digest from a response.
type dropDigest struct{ http.ResponseWriter }

func (d *dropDigest) WriteHeader(code int) {
	d.Header().Del("Docker-Content-Digest")
	d.ResponseWriter.WriteHeader(code)
}

func (d *dropDigest) Write(b []byte) (int, error) {
	d.Header().Del("Docker-Content-Digest")
	return d.ResponseWriter.Write(b)
}

func TestManifestErrors(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	seed(t, inner, "app", "v1")
	r := newClient(t, serve(t, inner).URL)
	tests := []struct {
		name, repo, ref string
		want            error
		code            string
		status          int
	}{
		{name: "unknown tag", repo: "app", ref: "v2", want: ErrNotFound, code: "MANIFEST_UNKNOWN", status: 404},
		{name: "unknown repository", repo: "other", ref: "v1", want: ErrNotFound, code: "NAME_UNKNOWN", status: 404},
		{name: "path traversal in repository", repo: "../v2", ref: "v1", want: ErrInvalid},
		{name: "query in reference", repo: "app", ref: "v1?x=y", want: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := r.GetManifest(t.Context(), tt.repo, tt.ref, nil)
			var e *Error
			if !errors.Is(err, tt.want) || !errors.As(err, &e) {
				t.Fatalf("GetManifest: %v, want %v", err, tt.want)
			}
			if e.Code != tt.code || e.Status != tt.status {
				t.Errorf("code %q status %d, want %q %d", e.Code, e.Status, tt.code, tt.status)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{
		{URL: "https://registry.example"},
		{Name: "x", URL: "ftp://registry.example"},
		{Name: "x", URL: "https://"},
		{Name: "x", URL: "https://user:pw@registry.example"},
		{Name: "x", URL: "https://registry.example/v2"},
		{Name: "x", URL: "https://registry.example", MaxAttempts: -1},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted invalid options", o)
		}
	}
	r, err := New(Options{Name: "hub", URL: "https://registry-1.docker.io/"})
	if err != nil || r.Name() != "hub" || r.o.MaxAttempts != defaultMaxAttempts || r.o.IdleTimeout != defaultIdleTimeout {
		t.Errorf("New with defaults: %v %+v", err, r)
	}
}
