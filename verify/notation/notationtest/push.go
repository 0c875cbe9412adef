package notationtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// ArtifactType is the artifactType of a Notation signature manifest, as
// the referrers API lists it.
const ArtifactType = "application/vnd.cncf.notary.signature"

// thumbprintAnnotation lists the SHA-256 thumbprints of the signing
// chain; notation writes it on every signature manifest.
const thumbprintAnnotation = "io.cncf.notary.x509chain.thumbprint#S256"

// emptyConfig is the OCI empty descriptor's content, "{}".
var emptyConfig = []byte("{}")

// Manifest builds the signature manifest `notation sign` pushes for sig,
// byte for byte in structure as notation-go v1.3 writes it: an OCI image
// manifest whose config is the empty JSON object "{}" typed
// application/vnd.cncf.notary.signature (so registries report that as the
// manifest's artifactType), one layer that is the envelope, sig.Subject
// as its subject, and the signing chain's thumbprints and the creation
// time as annotations. It returns the manifest's bytes and descriptor.
func Manifest(tb testing.TB, sig Signature) ([]byte, ocispec.Descriptor) {
	tb.Helper()
	thumbs := make([]string, len(sig.Chain))
	for i, c := range sig.Chain {
		sum := sha256.Sum256(c.Raw)
		thumbs[i] = hex.EncodeToString(sum[:])
	}
	tp, err := json.Marshal(thumbs)
	if err != nil {
		tb.Fatalf("thumbprints: %v", err)
	}
	subject := ocispec.Descriptor{MediaType: sig.Subject.MediaType, Digest: sig.Subject.Digest, Size: sig.Subject.Size}
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{
			MediaType: ArtifactType,
			Digest:    digest.FromBytes(emptyConfig),
			Size:      int64(len(emptyConfig)),
		},
		Layers: []ocispec.Descriptor{{
			MediaType: sig.MediaType,
			Digest:    digest.FromBytes(sig.Envelope),
			Size:      int64(len(sig.Envelope)),
		}},
		Subject: &subject,
		Annotations: map[string]string{
			thumbprintAnnotation:      string(tp),
			ocispec.AnnotationCreated: time.Now().UTC().Format(time.RFC3339),
		},
	}
	body, err := json.Marshal(m)
	if err != nil {
		tb.Fatalf("signature manifest: %v", err)
	}
	return body, ocispec.Descriptor{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Digest:       digest.FromBytes(body),
		Size:         int64(len(body)),
	}
}

// Push pushes sig's envelope, the empty config and its signature manifest
// (see Manifest) to repo on u, by digest, and returns the manifest's
// descriptor; the registry then lists it among the referrers of
// sig.Subject. It goes through u's front like any client, so the pushes
// are in u's recorded requests (call u.Reset before counting). With Basic
// authentication pass remote.WithAuth in opts; with DockerHubStyle, Push
// fetches an anonymous token itself (an upstream whose token endpoint
// demands credentials is not supported).
func Push(tb testing.TB, u *upstreamtest.Upstream, repo string, sig Signature, opts ...remote.Option) ocispec.Descriptor {
	tb.Helper()
	body, desc := Manifest(tb, sig)
	opts = append([]remote.Option{remote.WithContext(tb.Context())}, opts...)
	if u.TokenURL != "" {
		// go-containerregistry refuses token realms on loopback addresses,
		// so the token is fetched here and sent on every request.
		opts = append(opts, remote.WithTransport(bearer{token: pushToken(tb, u, repo), inner: http.DefaultTransport}))
	}
	r, err := name.NewRepository(u.Host+"/"+repo, name.Insecure)
	if err != nil {
		tb.Fatalf("repository %s: %v", repo, err)
	}
	for _, blob := range []struct {
		data []byte
		mt   string
	}{{emptyConfig, ocispec.MediaTypeEmptyJSON}, {sig.Envelope, sig.MediaType}} {
		if err := remote.WriteLayer(r, static.NewLayer(bytes.Clone(blob.data), types.MediaType(blob.mt)), opts...); err != nil {
			tb.Fatalf("push %s blob to %s: %v", blob.mt, r, err)
		}
	}
	if err := remote.Put(r.Digest(desc.Digest.String()), rawManifest(body), opts...); err != nil {
		tb.Fatalf("push signature manifest to %s: %v", r, err)
	}
	return desc
}

// pushToken asks u's token endpoint for a token on repo.
func pushToken(tb testing.TB, u *upstreamtest.Upstream, repo string) string {
	tb.Helper()
	q := url.Values{"service": {"registry.test"}, "scope": {"repository:" + repo + ":pull,push"}}
	req, err := http.NewRequestWithContext(tb.Context(), http.MethodGet, u.TokenURL+"/token?"+q.Encode(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("token for %s: %v", repo, err)
	}
	defer resp.Body.Close()
	var tok struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || resp.StatusCode != http.StatusOK || tok.Token == "" {
		tb.Fatalf("token for %s: status %d, %v", repo, resp.StatusCode, err)
	}
	return tok.Token
}

// bearer sends a fixed bearer token with every request.
type bearer struct {
	token string
	inner http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.inner.RoundTrip(r)
}

// rawManifest is a manifest remote.Put writes as is, with its media type.
type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
