package upstream

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
)

// maxReferrersBody bounds a referrers response, like a manifest.
const maxReferrersBody = MaxManifestSize

const mediaTypeOCIIndex = "application/vnd.oci.image.index.v1+json"

// Referrers calls GET /v2/<repo>/referrers/<digest>[?artifactType=]. It returns
// the raw body (an OCI image index, at most MaxManifestSize bytes), its
// Content-Type, and whether the upstream applied the artifactType filter
// (OCI-Filters-Applied). When the upstream does not implement the API (404
// whose body is not an OCI image index, or 400/405) the error matches
// ErrReferrersUnsupported, so the caller can fall back to the referrers tag
// schema.
func (r *Registry) Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) ([]byte, string, bool, error) {
	c := &call{upstream: r.o.Name, op: "referrers", method: http.MethodGet, repo: repo, ref: d.String(), auth: true,
		header: http.Header{"Accept": {mediaTypeOCIIndex}},
		pass:   []int{http.StatusNotFound, http.StatusBadRequest, http.StatusMethodNotAllowed}}
	if !validRepo(repo) || d.Validate() != nil {
		return nil, "", false, c.errorf(ErrInvalid, nil, "malformed repository or digest")
	}
	c.url = r.endpoint(repo, "referrers", d.String())
	if artifactType != "" {
		c.url += "?artifactType=" + url.QueryEscape(artifactType)
	}
	resp, err := r.do(ctx, c)
	if err != nil {
		return nil, "", false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReferrersBody+1))
	if err != nil {
		return nil, "", false, err
	}
	if len(body) > maxReferrersBody {
		return nil, "", false, c.errorf(ErrInvalid, nil, "referrers response larger than %d bytes", maxReferrersBody)
	}
	isIndex := isImageIndex(body)
	if resp.StatusCode != http.StatusOK && !(resp.StatusCode == http.StatusNotFound && isIndex) {
		e := c.errorf(ErrReferrersUnsupported, nil, "")
		e.Status = resp.StatusCode
		return nil, "", false, e
	}
	if !isIndex {
		e := c.errorf(ErrInvalid, nil, "referrers response is not an OCI image index")
		e.Status = resp.StatusCode
		return nil, "", false, e
	}
	ct := resp.Header.Get("Content-Type")
	if ct == "" {
		ct = mediaTypeOCIIndex
	}
	return body, ct, artifactType != "" && filtersApplied(resp.Header.Values("OCI-Filters-Applied"), "artifactType"), nil
}

// isImageIndex reports whether b is an OCI image index: schemaVersion 2 and a
// manifests array, with the index media type if it names one.
func isImageIndex(b []byte) bool {
	var idx struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     string            `json:"mediaType"`
		Manifests     []json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(b, &idx) != nil || idx.SchemaVersion != 2 || idx.Manifests == nil {
		return false
	}
	return idx.MediaType == "" || idx.MediaType == mediaTypeOCIIndex
}

// filtersApplied reports whether the comma-separated OCI-Filters-Applied
// values name filter.
func filtersApplied(values []string, filter string) bool {
	for _, v := range values {
		for _, f := range strings.Split(v, ",") {
			if strings.TrimSpace(f) == filter {
				return true
			}
		}
	}
	return false
}
