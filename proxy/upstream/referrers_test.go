package upstream

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

const sbomType = "application/vnd.example.sbom.v1+json"

// seedReferrer pushes an artifact whose subject is s's image and returns its
// digest.
func seedReferrer(t *testing.T, h http.Handler, s seeded) string {
	t.Helper()
	art, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	subject, err := partialDescriptor(s.img)
	if err != nil {
		t.Fatal(err)
	}
	withSubject := mutate.Subject(mutate.ConfigMediaType(art, sbomType), *subject).(v1.Image)
	d, err := withSubject.Digest()
	if err != nil {
		t.Fatal(err)
	}
	push(t, h, s.repo+"@"+d.String(), withSubject)
	return d.String()
}

func partialDescriptor(img v1.Image) (*v1.Descriptor, error) {
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	size, err := img.Size()
	if err != nil {
		return nil, err
	}
	mt, err := img.MediaType()
	if err != nil {
		return nil, err
	}
	return &v1.Descriptor{MediaType: mt, Digest: d, Size: size}, nil
}

func TestReferrers(t *testing.T) {
	t.Parallel()
	const emptyIndex = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	fixed := func(code int, body string) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_, _ = w.Write([]byte(body))
		}
	}
	tests := []struct {
		name         string
		supported    bool                      // the real registry implements the API
		filters      bool                      // front sets OCI-Filters-Applied
		respond      func(http.ResponseWriter) // front answers itself
		artifactType string
		want         error
		wantCount    int // manifests in the returned index
		wantFiltered bool
	}{
		{name: "present", supported: true, wantCount: 1},
		{name: "present, filter requested but not applied", supported: true, artifactType: sbomType, wantCount: 1},
		{name: "present, filter applied", supported: true, filters: true, artifactType: sbomType, wantCount: 1, wantFiltered: true},
		{name: "absent: 404 that is not an index", want: ErrReferrersUnsupported},
		{name: "absent: 405", respond: fixed(405, ""), want: ErrReferrersUnsupported},
		{name: "absent: 400", respond: fixed(400, `{"errors":[{"code":"UNSUPPORTED"}]}`), want: ErrReferrersUnsupported},
		{name: "404 carrying an empty index", respond: fixed(404, emptyIndex), wantCount: 0},
		{name: "200 that is not an index", respond: fixed(200, `{"hello":"world"}`), want: ErrInvalid},
		{name: "503 until attempts run out", respond: fixed(503, ""), want: ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(tt.supported)
			s := seed(t, inner, "app", "v1")
			ref := seedReferrer(t, inner, s)
			var mu sync.Mutex
			var gotType string
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/referrers/") {
					mu.Lock()
					gotType = r.URL.Query().Get("artifactType")
					mu.Unlock()
					if tt.respond != nil {
						tt.respond(w)
						return
					}
					if tt.filters {
						w.Header().Set("OCI-Filters-Applied", "artifactType")
					}
				}
				inner.ServeHTTP(w, r)
			})
			r := newClient(t, serve(t, h).URL)
			body, ct, filtered, err := r.Referrers(t.Context(), "app", digestOf(t, s.digest), tt.artifactType)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Referrers: %v, want %v", err, tt.want)
			}
			mu.Lock()
			if gotType != tt.artifactType {
				t.Errorf("upstream saw artifactType %q, want %q", gotType, tt.artifactType)
			}
			mu.Unlock()
			if err != nil {
				return
			}
			var idx v1.IndexManifest
			if err := json.Unmarshal(body, &idx); err != nil {
				t.Fatal(err)
			}
			if len(idx.Manifests) != tt.wantCount || filtered != tt.wantFiltered {
				t.Fatalf("%d manifests, filtered %v; want %d, %v", len(idx.Manifests), filtered, tt.wantCount, tt.wantFiltered)
			}
			if tt.wantCount == 1 && (idx.Manifests[0].Digest.String() != ref || idx.Manifests[0].ArtifactType != sbomType) {
				t.Errorf("referrer %+v, want %s of type %s", idx.Manifests[0], ref, sbomType)
			}
			if !strings.HasPrefix(ct, "application/") {
				t.Errorf("content type %q", ct)
			}
		})
	}
}
