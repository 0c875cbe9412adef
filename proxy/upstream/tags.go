package upstream

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
)

const (
	// maxTagsPage bounds one page of a tag list.
	maxTagsPage = 16 << 20
	// maxTagsPages bounds pagination, so an upstream whose Link headers never
	// end cannot keep a request busy forever.
	maxTagsPages = 1000
)

// Tags returns all tags of repo, following the upstream's
// `Link: <...>; rel="next"` pagination. Next links must stay on the
// upstream's own origin.
func (r *Registry) Tags(ctx context.Context, repo string) ([]string, error) {
	c := &call{upstream: r.o.Name, op: "tags", method: http.MethodGet, repo: repo, auth: true}
	if !validRepo(repo) {
		return nil, c.errorf(ErrInvalid, nil, "malformed repository name")
	}
	next := r.endpoint(repo, "tags", "list")
	seen := map[string]bool{}
	tags := []string{}
	for page := 0; next != ""; page++ {
		if page >= maxTagsPages || seen[next] {
			return nil, c.errorf(ErrInvalid, nil, "tag list pagination does not end")
		}
		seen[next] = true
		c.url = next
		var err error
		var names []string
		if names, next, err = r.tagsPage(ctx, c); err != nil {
			return nil, err
		}
		tags = append(tags, names...)
	}
	return tags, nil
}

// tagsPage fetches one page and returns its tags and the next page's URL.
func (r *Registry) tagsPage(ctx context.Context, c *call) ([]string, string, error) {
	resp, err := r.do(ctx, c)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxTagsPage+1))
	if err != nil {
		return nil, "", err
	}
	if len(b) > maxTagsPage {
		return nil, "", c.errorf(ErrInvalid, nil, "tag list page larger than %d bytes", maxTagsPage)
	}
	var body struct {
		Tags []string `json:"tags"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return nil, "", c.errorf(ErrInvalid, err, "tag list is not JSON")
	}
	link, ok := nextLink(resp.Header.Values("Link"))
	if !ok {
		return body.Tags, "", nil
	}
	cur, _ := url.Parse(c.url)
	u, err := cur.Parse(link)
	if err != nil || !sameOrigin(u, r.base) {
		return nil, "", c.errorf(ErrInvalid, err, "tag list Link %q does not point into the upstream", link)
	}
	return body.Tags, u.String(), nil
}

// nextLink finds the rel="next" target among Link header values
// (RFC 8288): `<url>; rel="next"`, possibly several links per value.
func nextLink(values []string) (string, bool) {
	for _, v := range values {
		for v != "" {
			v = strings.TrimLeft(v, " \t,")
			if !strings.HasPrefix(v, "<") {
				break
			}
			end := strings.IndexByte(v, '>')
			if end < 0 {
				break
			}
			target := v[1:end]
			v = v[end+1:]
			params := v
			if i := strings.Index(v, ",<"); i >= 0 {
				params, v = v[:i], v[i+1:]
			} else if i := strings.Index(v, ", <"); i >= 0 {
				params, v = v[:i], v[i+1:]
			} else {
				v = ""
			}
			for _, p := range strings.Split(params, ";") {
				name, val, _ := strings.Cut(strings.TrimSpace(p), "=")
				if !strings.EqualFold(strings.TrimSpace(name), "rel") {
					continue
				}
				for _, rel := range strings.Fields(strings.Trim(strings.TrimSpace(val), `"`)) {
					if strings.EqualFold(rel, "next") {
						return target, true
					}
				}
			}
		}
	}
	return "", false
}
