package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/proxy/upstream"
)

// index is the subset of an OCI image index the referrers API needs; other
// fields are kept raw so nothing an upstream sends is lost.
type index struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Manifests     []json.RawMessage `json:"manifests"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// serveReferrers answers the referrers API. Upstreams without it are asked
// for the tag-schema fallback (<alg>-<hex> tag); the artifactType filter is
// applied here when the upstream did not apply it.
func (p *Proxy) serveReferrers(w http.ResponseWriter, r *http.Request, rq *request) error {
	ctx := r.Context()
	d, _ := parseDigest(rq.route.Reference)
	artifactType := r.URL.Query().Get("artifactType")
	key := rq.route.Key() + "\x00" + d.String() + "\x00" + artifactType
	var (
		ans referrersAnswer
		err error
	)
	if cached, fresh, ok := p.referrers.get(key, p.now()); ok && fresh {
		ans = cached
		rq.cache = "hit"
	} else {
		var v any
		// Concurrent requests for the same list share one upstream call.
		v, err = p.shared(ctx, "referrers\x00"+key, func() (any, error) {
			lctx, cancel := p.detached(ctx, lookupTimeout)
			defer cancel()
			a, err := p.fetchReferrers(lctx, rq, d, artifactType)
			if err == nil {
				p.referrers.put(key, a, p.now().Add(rq.tagTTL))
			}
			return a, err
		})
		switch {
		case err == nil:
			ans = v.(referrersAnswer)
		case ok && offline(err):
			p.staleServe(ctx, rq, "referrers of "+d.String(), err)
			ans, err = cached, nil
		default:
			return withNotFound(err, CodeManifestUnknown)
		}
	}
	if ans.filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	w.Header().Set("Content-Type", mediaOCIIndex)
	w.Header().Set("Content-Length", strconv.Itoa(len(ans.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, err = w.Write(ans.body)
	}
	return err
}

// referrersAnswer is a referrers list as served: the index airlock built and
// whether the artifactType filter was applied.
type referrersAnswer struct {
	body     []byte
	filtered bool
}

// fetchReferrers asks the upstream for the referrers of d (or reads its
// tag-schema fallback) and builds the index served to clients.
func (p *Proxy) fetchReferrers(ctx context.Context, rq *request, d digest.Digest, artifactType string) (referrersAnswer, error) {
	body, _, filtered, err := rq.registry.Referrers(ctx, rq.route.Repo, d, artifactType)
	if errors.Is(err, upstream.ErrReferrersUnsupported) {
		body, err = p.referrersByTag(ctx, rq, d)
		filtered = false
	}
	if err != nil {
		return referrersAnswer{}, err
	}
	var idx index
	if err := json.Unmarshal(body, &idx); err != nil {
		return referrersAnswer{}, fmt.Errorf("referrers of %s from upstream %s are not an image index: %w: %w", d, rq.route.Upstream.Name, err, upstream.ErrInvalid)
	}
	if artifactType != "" && !filtered {
		idx.Manifests = filterArtifactType(idx.Manifests, artifactType)
		filtered = true
	}
	if idx.Manifests == nil {
		idx.Manifests = []json.RawMessage{}
	}
	idx.SchemaVersion, idx.MediaType = 2, mediaOCIIndex
	out, err := json.Marshal(idx)
	if err != nil {
		return referrersAnswer{}, err
	}
	return referrersAnswer{body: out, filtered: artifactType != "" && filtered}, nil
}

// referrersByTag reads the fallback tag <alg>-<hex>; a missing tag means
// there are no referrers, which is an empty index, not an error.
func (p *Proxy) referrersByTag(ctx context.Context, rq *request, d digest.Digest) ([]byte, error) {
	tag := d.Algorithm().String() + "-" + d.Encoded()
	_, body, err := rq.registry.GetManifest(ctx, rq.route.Repo, tag, []string{mediaOCIIndex})
	if errors.Is(err, upstream.ErrNotFound) {
		return []byte(`{"schemaVersion":2,"mediaType":"` + mediaOCIIndex + `","manifests":[]}`), nil
	}
	if err != nil {
		return nil, err
	}
	defer body.Close()
	data, err := io.ReadAll(io.LimitReader(body, p.maxMan+1))
	if err != nil {
		return nil, fmt.Errorf("reading referrers tag %s: %w", tag, err)
	}
	if int64(len(data)) > p.maxMan {
		return nil, fmt.Errorf("referrers tag %s is over %d bytes: %w", tag, p.maxMan, upstream.ErrInvalid)
	}
	return data, nil
}

func filterArtifactType(ms []json.RawMessage, artifactType string) []json.RawMessage {
	out := []json.RawMessage{}
	for _, m := range ms {
		var desc struct {
			ArtifactType string `json:"artifactType"`
		}
		if json.Unmarshal(m, &desc) == nil && strings.EqualFold(desc.ArtifactType, artifactType) {
			out = append(out, m)
		}
	}
	return out
}
