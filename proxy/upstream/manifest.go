package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"

	"github.com/opencontainers/go-digest"
)

// DefaultManifestAccept returns the Accept list sent when the caller has none
// of its own: every manifest and index type a modern client understands.
// Without it some registries fall back to converting to schema 1.
func DefaultManifestAccept() []string {
	return []string{
		"application/vnd.oci.image.index.v1+json",
		"application/vnd.oci.image.manifest.v1+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
		"application/vnd.docker.distribution.manifest.v2+json",
	}
}

// MaxManifestSize bounds the body HeadManifest reads when it has to fall back
// to GET to learn a digest. Registries themselves refuse manifests above
// 4 MiB.
const MaxManifestSize = 4 << 20

func (r *Registry) manifestCall(repo, ref string, method string, accept []string) (*call, error) {
	c := &call{upstream: r.o.Name, op: "manifest", method: method, repo: repo, ref: ref, auth: true}
	if !validRepo(repo) || !validRef(ref) {
		return nil, c.errorf(ErrInvalid, nil, "malformed repository or reference")
	}
	c.url = r.endpoint(repo, "manifests", ref)
	if len(accept) == 0 {
		accept = DefaultManifestAccept()
	}
	c.header = http.Header{"Accept": slices.Clone(accept)}
	return c, nil
}

// HeadManifest resolves ref (tag or digest) with HEAD, forwarding accept as the
// Accept header (empty: DefaultManifestAccept()). When the upstream sends no
// Docker-Content-Digest it falls back to GET, reading at most MaxManifestSize
// bytes and computing the digest itself.
func (r *Registry) HeadManifest(ctx context.Context, repo, ref string, accept []string) (Descriptor, error) {
	c, err := r.manifestCall(repo, ref, http.MethodHead, accept)
	if err != nil {
		return Descriptor{}, err
	}
	resp, err := r.do(ctx, c)
	var uerr *Error
	if errors.As(err, &uerr) && (uerr.Status == http.StatusMethodNotAllowed || uerr.Status == http.StatusNotImplemented) {
		// A registry that does not implement HEAD on manifests is still
		// answered, at the cost of one counted GET.
		return r.resolveByGet(ctx, repo, ref, accept)
	}
	if err != nil {
		return Descriptor{}, err
	}
	discard(resp)
	desc, err := descriptorFrom(resp, c)
	if err != nil || desc.Digest != "" {
		return desc, err
	}
	return r.resolveByGet(ctx, repo, ref, accept)
}

// resolveByGet learns a manifest's descriptor by reading it.
func (r *Registry) resolveByGet(ctx context.Context, repo, ref string, accept []string) (Descriptor, error) {
	desc, body, err := r.GetManifest(ctx, repo, ref, accept)
	if err != nil {
		return Descriptor{}, err
	}
	defer body.Close()
	c, _ := r.manifestCall(repo, ref, http.MethodGet, accept)
	alg := digest.Canonical
	if d, err := digest.Parse(ref); err == nil && d.Algorithm().Available() {
		alg = d.Algorithm() // so the caller can compare with ref
	}
	dg := alg.Digester()
	n, err := io.Copy(dg.Hash(), io.LimitReader(body, MaxManifestSize+1))
	if err != nil {
		return Descriptor{}, err
	}
	if n > MaxManifestSize {
		return Descriptor{}, c.errorf(ErrInvalid, nil, "manifest larger than %d bytes", MaxManifestSize)
	}
	if desc.Size >= 0 && desc.Size != n {
		return Descriptor{}, c.errorf(ErrInvalid, nil, "manifest body is %d bytes, Content-Length said %d", n, desc.Size)
	}
	if desc.Digest != "" && desc.Digest.Algorithm() == alg && desc.Digest != dg.Digest() {
		return Descriptor{}, c.errorf(ErrInvalid, nil, "manifest digest %s does not match Docker-Content-Digest %s", dg.Digest(), desc.Digest)
	}
	desc.Digest, desc.Size = dg.Digest(), n
	return desc, nil
}

// GetManifest fetches a manifest. The caller verifies and bounds the body and
// must close it. desc comes from the response headers (Digest empty if the
// upstream sent none, Size -1 if it sent no Content-Length).
func (r *Registry) GetManifest(ctx context.Context, repo, ref string, accept []string) (Descriptor, io.ReadCloser, error) {
	c, err := r.manifestCall(repo, ref, http.MethodGet, accept)
	if err != nil {
		return Descriptor{}, nil, err
	}
	resp, err := r.do(ctx, c)
	if err != nil {
		return Descriptor{}, nil, err
	}
	desc, err := descriptorFrom(resp, c)
	if err != nil {
		discard(resp)
		return Descriptor{}, nil, err
	}
	return desc, resp.Body, nil
}

// descriptorFrom reads what the upstream claims in the headers of a manifest
// response.
func descriptorFrom(resp *http.Response, c *call) (Descriptor, error) {
	desc := Descriptor{MediaType: resp.Header.Get("Content-Type"), Size: -1}
	if resp.ContentLength >= 0 && c.method == http.MethodGet {
		desc.Size = resp.ContentLength
	} else if v := resp.Header.Get("Content-Length"); v != "" {
		// net/http reports -1 for HEAD; the header is still the manifest's size.
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return Descriptor{}, c.errorf(ErrInvalid, err, "malformed Content-Length %q", v)
		}
		desc.Size = n
	}
	if v := resp.Header.Get("Docker-Content-Digest"); v != "" {
		d, err := digest.Parse(v)
		if err != nil {
			return Descriptor{}, c.errorf(ErrInvalid, err, "malformed Docker-Content-Digest")
		}
		desc.Digest = d
	}
	return desc, nil
}
