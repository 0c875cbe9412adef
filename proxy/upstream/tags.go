package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// The bounds of one aggregated tag list. The whole list is held in memory
// (and shared by concurrent requests for it) so that it can be sorted and
// paged for clients, so it is bounded as a whole, not only per page.
const (
	// maxTagListBytes bounds the bytes of all pages together.
	maxTagListBytes = 16 << 20
	// maxTags bounds the tags of all pages together: generous for real
	// repositories (those with the most tags have tens of thousands), and
	// at 16 bytes of string header each plus the names, a few MiB.
	maxTags = 100_000
	// maxTagsPages bounds pagination, so an upstream whose Link headers
	// never end cannot keep a request busy forever.
	maxTagsPages = 1000
	// maxTagsLink bounds one next-page URL; real ones carry a repository
	// name and a tag.
	maxTagsLink = 8 << 10
)

// Tags returns all tags of repo, following the upstream's
// `Link: <...>; rel="next"` pagination. Next links must stay on the
// upstream's own origin.
//
// A list beyond maxTags tags or maxTagListBytes bytes, or more than
// maxTagsPages pages, is an ErrInvalid error that says so, not a truncated
// list: like a registry's own tag list, the answer is complete or an error,
// so that a client choosing "the newest tag" never chooses from part of the
// list. Pulls by tag are not affected.
func (r *Registry) Tags(ctx context.Context, repo string) ([]string, error) {
	c := &call{upstream: r.o.Name, op: "tags", method: http.MethodGet, repo: repo, auth: true}
	if !validRepo(repo) {
		return nil, c.errorf(ErrInvalid, nil, "malformed repository name")
	}
	next := r.endpoint(repo, "tags", "list")
	seen := map[string]bool{}
	tags := []string{}
	budget := int64(maxTagListBytes)
	for page := 0; next != ""; page++ {
		if page >= maxTagsPages || seen[next] {
			return nil, c.errorf(ErrInvalid, nil, "tag list pagination does not end")
		}
		seen[next] = true
		c.url = next
		var err error
		var names []string
		var n int64
		if names, next, n, err = r.tagsPage(ctx, c, budget, maxTags-len(tags)); err != nil {
			return nil, err
		}
		budget -= n
		tags = append(tags, names...)
		if len(tags) > maxTags {
			return nil, tooManyTags(c)
		}
	}
	return tags, nil
}

func tooManyTags(c *call) *Error {
	e := c.errorf(ErrInvalid, nil, "the tag list has more than %d tags or %d MiB, more than airlock gathers; pull by tag or digest instead", maxTags, maxTagListBytes>>20)
	e.public = true
	return e
}

// tagsPage fetches one page of at most budget bytes and room tags and
// returns its tags, the next page's URL and the page's size.
func (r *Registry) tagsPage(ctx context.Context, c *call, budget int64, room int) ([]string, string, int64, error) {
	resp, err := r.do(ctx, c)
	if err != nil {
		return nil, "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, budget+1))
	if err != nil {
		return nil, "", 0, err
	}
	if int64(len(b)) > budget {
		return nil, "", 0, tooManyTags(c)
	}
	tags, err := decodeTags(b, room)
	if errors.Is(err, errTooManyTags) {
		return nil, "", 0, tooManyTags(c)
	}
	if err != nil {
		return nil, "", 0, c.errorf(ErrInvalid, err, "tag list is not JSON")
	}
	link, ok := nextLink(resp.Header.Values("Link"))
	if !ok {
		return tags, "", int64(len(b)), nil
	}
	if len(link) > maxTagsLink {
		// Every next URL is remembered to detect loops.
		return nil, "", 0, c.errorf(ErrInvalid, nil, "tag list Link is %d bytes, more than %d", len(link), maxTagsLink)
	}
	cur, _ := url.Parse(c.url)
	u, err := cur.Parse(link)
	if err != nil || !sameOrigin(u, r.base) {
		return nil, "", 0, c.errorf(ErrInvalid, err, "tag list Link %q does not point into the upstream", link)
	}
	return tags, u.String(), int64(len(b)), nil
}

var errTooManyTags = errors.New("too many tags")

// decodeTags returns the "tags" of a tag list page, or errTooManyTags as
// soon as it holds more than room. It decodes the list a tag at a time:
// decoded whole, a page within the byte bound of empty tags ("",) would
// take tens of times its size in string headers before it could be
// counted. Like encoding/json it matches the key case-insensitively and
// lets a repeated key win.
func decodeTags(b []byte, room int) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	var tags []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if key, _ := tok.(string); !strings.EqualFold(key, "tags") {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, err
			}
			continue
		}
		if tags, err = decodeTagArray(dec, room); err != nil {
			return nil, err
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the tag list")
	}
	return tags, nil
}

// decodeTagArray decodes the value of "tags": null or an array of strings.
func decodeTagArray(dec *json.Decoder, room int) ([]string, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok == nil {
		return nil, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, fmt.Errorf("tags is %v, not a list", tok)
	}
	tags := []string{}
	for dec.More() {
		if len(tags) >= room {
			return nil, errTooManyTags
		}
		var tag string
		if err := dec.Decode(&tag); err != nil {
			return nil, err
		}
		tags = append(tags, tag)
	}
	return tags, expectDelim(dec, ']')
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("want %q, got %v", want, tok)
	}
	return nil
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
