package proxy

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
)

// maxTagPage bounds n so one request cannot ask for an unbounded page.
const maxTagPage = 10000

// serveTags answers tags/list with n/last pagination and a Link header,
// whether or not the upstream paginates. When the upstream cannot answer,
// the tags airlock has seen are served instead.
func (p *Proxy) serveTags(w http.ResponseWriter, r *http.Request, rq *request) error {
	ctx := r.Context()
	q := r.URL.Query()
	n := -1
	if v := q.Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			return &Error{Status: http.StatusBadRequest, Code: CodeUnsupported, Message: "n must be a non-negative integer"}
		}
		n = min(n, maxTagPage)
	}
	key := rq.route.Key()
	v, err := p.shared(ctx, "tags\x00"+key, func() (any, error) {
		lctx, cancel := p.detached(ctx, lookupTimeout)
		defer cancel()
		return rq.registry.Tags(lctx, rq.route.Repo)
	})
	var tags []string
	switch {
	case err == nil:
		tags = slices.Clone(v.([]string))
	case offline(err):
		known, kerr := p.meta.Tags(ctx, key)
		if kerr != nil || len(known) == 0 {
			return err
		}
		p.staleServe(ctx, rq, "tag list", err)
		tags = known
	default:
		return withNotFound(err, CodeNameUnknown)
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)
	if last := q.Get("last"); last != "" {
		i, _ := slices.BinarySearch(tags, last)
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	if n >= 0 && len(tags) > n {
		tags = tags[:n]
		if n > 0 {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {tags[n-1]}}
			if ns := q.Get("ns"); ns != "" {
				next.Set("ns", ns)
			}
			w.Header().Set("Link", "</v2/"+rq.route.Name+"/tags/list?"+next.Encode()+`>; rel="next"`)
		}
	}
	if tags == nil {
		tags = []string{}
	}
	body, err := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{rq.route.Name, tags})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, err = w.Write(body)
	}
	return err
}
