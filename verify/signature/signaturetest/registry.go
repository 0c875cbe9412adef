package signaturetest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/verify/signature"
)

// Subject describes an image pushed to an Upstream, as signatures and
// referrers name it.
func Subject(tb testing.TB, img upstreamtest.Image) ocispec.Descriptor {
	tb.Helper()
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		tb.Fatalf("image manifest: %v", err)
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.Digest(img.Digest.String()), Size: int64(len(img.Manifest))}
}

// LegacyTag is cosign's signature tag for d, "sha256-<hex>.sig".
func LegacyTag(d digest.Digest) string { return d.Algorithm().String() + "-" + d.Encoded() + ".sig" }

// FallbackTag is the OCI referrers tag-schema fallback tag for d,
// "sha256-<hex>".
func FallbackTag(d digest.Digest) string { return d.Algorithm().String() + "-" + d.Encoded() }

// PushOption adjusts how the Push helpers authenticate.
type PushOption func(*pushConfig)

type pushConfig struct{ authorization string }

// WithBasicAuth authenticates pushes to a Basic Upstream.
func WithBasicAuth(username, password string) PushOption {
	return func(c *pushConfig) {
		c.authorization = "Basic " + base64.StdEncoding.EncodeToString([]byte(username+":"+password))
	}
}

// pushAuth is the Authorization header pushes to repo carry: a token from
// a DockerHubStyle Upstream's endpoint (anonymous), Basic credentials
// from opts, or none.
func pushAuth(tb testing.TB, u *upstreamtest.Upstream, repo string, opts []PushOption) string {
	tb.Helper()
	var c pushConfig
	for _, o := range opts {
		o(&c)
	}
	if c.authorization != "" || u.TokenURL == "" {
		return c.authorization
	}
	q := url.Values{"service": {"registry.test"}, "scope": {"repository:" + repo + ":pull,push"}}
	resp := do(tb, http.MethodGet, u.TokenURL+"/token?"+q.Encode(), "", "", nil, http.StatusOK)
	var tok struct {
		Token string `json:"token"`
	}
	err := json.NewDecoder(resp.Body).Decode(&tok)
	_ = resp.Body.Close()
	if err != nil || tok.Token == "" {
		tb.Fatalf("push token for %s: %v", repo, err)
	}
	return "Bearer " + tok.Token
}

// PushSignatures uploads cosign's signature manifest holding layers to
// repo's tag for subject ("sha256-<hex>.sig") and returns it.
func PushSignatures(tb testing.TB, u *upstreamtest.Upstream, repo string, subject digest.Digest, layers []Layer, opts ...PushOption) Artifact {
	tb.Helper()
	a := SignatureManifest(tb, layers...)
	PushArtifact(tb, u, repo, LegacyTag(subject), a, opts...)
	return a
}

// PushAttestations uploads cosign's attestation manifest holding layers
// (from AttestKeyless or AttestKey) to repo's tag "sha256-<hex>.att".
func PushAttestations(tb testing.TB, u *upstreamtest.Upstream, repo string, subject digest.Digest, layers []Layer, opts ...PushOption) Artifact {
	tb.Helper()
	a := SignatureManifest(tb, layers...)
	PushArtifact(tb, u, repo, subject.Algorithm().String()+"-"+subject.Encoded()+".att", a, opts...)
	return a
}

// PushArtifact uploads a's blobs and its manifest to repo, under ref (a
// tag) or, when ref is empty, by digest. A manifest with a subject is
// listed by the registry's referrers API.
func PushArtifact(tb testing.TB, u *upstreamtest.Upstream, repo, ref string, a Artifact, opts ...PushOption) ocispec.Descriptor {
	tb.Helper()
	auth := pushAuth(tb, u, repo, opts)
	for _, b := range a.Blobs {
		putBlob(tb, u.URL, repo, auth, b)
	}
	desc := a.Descriptor()
	if ref == "" {
		ref = desc.Digest.String()
	}
	closeBody(do(tb, http.MethodPut, fmt.Sprintf("%s/v2/%s/manifests/%s", u.URL, repo, ref), auth, a.MediaType, a.Manifest, http.StatusCreated))
	return desc
}

// PushFallbackIndex uploads the referrers tag-schema fallback for subject:
// an index at tag "sha256-<hex>" listing descs, as clients write it for
// registries without the referrers API.
func PushFallbackIndex(tb testing.TB, u *upstreamtest.Upstream, repo string, subject digest.Digest, descs []ocispec.Descriptor, opts ...PushOption) {
	tb.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: descs}
	idx.SchemaVersion = 2
	b, err := json.Marshal(idx)
	if err != nil {
		tb.Fatalf("fallback index: %v", err)
	}
	auth := pushAuth(tb, u, repo, opts)
	closeBody(do(tb, http.MethodPut, fmt.Sprintf("%s/v2/%s/manifests/%s", u.URL, repo, FallbackTag(subject)), auth, ocispec.MediaTypeImageIndex, b, http.StatusCreated))
}

func putBlob(tb testing.TB, base, repo, auth string, b []byte) {
	tb.Helper()
	resp := do(tb, http.MethodPost, fmt.Sprintf("%s/v2/%s/blobs/uploads/", base, repo), auth, "", nil, http.StatusAccepted)
	closeBody(resp)
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		tb.Fatalf("upload location: %v", err)
	}
	u, _ := url.Parse(base)
	u = u.ResolveReference(loc)
	q := u.Query()
	q.Set("digest", digest.FromBytes(b).String())
	u.RawQuery = q.Encode()
	closeBody(do(tb, http.MethodPut, u.String(), auth, "application/octet-stream", b, http.StatusCreated))
}

func closeBody(resp *http.Response) { _ = resp.Body.Close() }

// do sends one request and checks its status. The caller closes the body.
func do(tb testing.TB, method, target, authorization, contentType string, body []byte, want int) *http.Response {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.Context(), method, target, bytes.NewReader(body))
	if err != nil {
		tb.Fatalf("%s %s: %v", method, target, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, target, err)
	}
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		_ = resp.Body.Close()
		tb.Fatalf("%s %s: status %d, want %d: %s", method, target, resp.StatusCode, want, msg)
	}
	return resp
}

// Fetcher reads one repository of a registry over HTTP: the
// signature.Fetcher airlock's proxy implements over its cache, for tests
// that verify straight against an Upstream.
type Fetcher struct {
	// Base is the registry's URL, "http://127.0.0.1:PORT".
	Base string
	Repo string
	// Client defaults to http.DefaultClient.
	Client *http.Client
	// NoReferrersAPI skips the referrers API and reads only the
	// tag-schema fallback, as against a registry without the API.
	NoReferrersAPI bool
}

var _ signature.Fetcher = (*Fetcher)(nil)

var manifestTypes = strings.Join([]string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
	"application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json"}, ", ")

// Manifest fetches a manifest by tag or digest.
func (f *Fetcher) Manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	resp, err := f.get(ctx, fmt.Sprintf("/v2/%s/manifests/%s", f.Repo, ref), manifestTypes)
	if err != nil {
		return nil, "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, "", "", fmt.Errorf("reading manifest %s: %w", ref, err)
	}
	return body, resp.Header.Get("Content-Type"), digest.FromBytes(body), nil
}

// Blob fetches a blob, refusing one larger than max bytes.
func (f *Fetcher) Blob(ctx context.Context, d digest.Digest, max int64) ([]byte, error) {
	resp, err := f.get(ctx, fmt.Sprintf("/v2/%s/blobs/%s", f.Repo, d), "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading blob %s: %w", d, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("blob %s is larger than %d bytes", d, max)
	}
	return b, nil
}

// Referrers lists d's referrers from the referrers API, or from the
// fallback tag when the API is absent.
func (f *Fetcher) Referrers(ctx context.Context, d digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	var idx ocispec.Index
	path := fmt.Sprintf("/v2/%s/referrers/%s", f.Repo, d)
	if artifactType != "" {
		path += "?artifactType=" + url.QueryEscape(artifactType)
	}
	var resp *http.Response
	var err error
	if !f.NoReferrersAPI {
		resp, err = f.get(ctx, path, ocispec.MediaTypeImageIndex)
	}
	if f.NoReferrersAPI || errors.Is(err, signature.ErrNotFound) {
		resp, err = f.get(ctx, fmt.Sprintf("/v2/%s/manifests/%s", f.Repo, FallbackTag(d)), ocispec.MediaTypeImageIndex)
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&idx); err != nil {
		return nil, fmt.Errorf("reading referrers of %s: %w", d, err)
	}
	var out []ocispec.Descriptor
	for _, m := range idx.Manifests {
		if artifactType == "" || m.ArtifactType == artifactType {
			out = append(out, m)
		}
	}
	return out, nil
}

func (f *Fetcher) get(ctx context.Context, path, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.Base+path, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	c := f.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		_ = resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %w", path, signature.ErrNotFound)
	case resp.StatusCode != http.StatusOK:
		_ = resp.Body.Close()
		return nil, fmt.Errorf("GET %s: status %d", path, resp.StatusCode)
	}
	return resp, nil
}
