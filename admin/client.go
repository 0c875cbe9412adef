package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Client talks to the admin API; the CLI's verbs are built on it.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// NewClient returns a client of the admin API at server ("http://host:port"
// or just "host:port"), authenticating with token. hc nil means
// http.DefaultClient.
func NewClient(server, token string, hc *http.Client) (*Client, error) {
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server %q is not an http:// or https:// address of airlock's admin listener (admin.listen)", server)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return &Client{base: u, token: token, http: hc}, nil
}

// Server is the address the client talks to.
func (c *Client) Server() string { return c.base.String() }

// APIError is an error answer from the server.
type APIError struct {
	Status  int
	Code    Code
	Message string
}

func (e *APIError) Error() string { return e.Message }

// ErrUnreachable marks a request that never got an answer: the server is
// down, or --server names the wrong address.
var ErrUnreachable = errors.New("admin API unreachable")

type unreachableError struct {
	server string
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach airlock's admin API at %s: %v; is airlock running, and is that its admin.listen address? "+
		"Set --server or AIRLOCK_SERVER", e.server, e.err)
}

func (e *unreachableError) Unwrap() error        { return e.err }
func (e *unreachableError) Is(target error) bool { return target == ErrUnreachable }

// do sends a request to path (below the API prefix) with query and body,
// and decodes a 2xx JSON answer into out (when out is not nil).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	resp, data, err := c.send(ctx, method, path, query, body, "application/json")
	if err != nil {
		return err
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("the answer of %s %s is not the JSON expected (is %s airlock's admin listener?): %w", method, resp.Request.URL.Path, c.base, err)
	}
	return nil
}

// send sends a request and returns a 2xx answer with its body; any other
// answer is an error.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, body any, accept string) (*http.Response, []byte, error) {
	u := *c.base
	u.Path = c.base.Path + Prefix + path
	u.RawQuery = query.Encode()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, &unreachableError{server: c.base.String(), err: unwrapURLError(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the answer of %s %s: %w", method, u.Path, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, nil, decodeError(resp, data)
	}
	return resp, data, nil
}

// unwrapURLError drops url.Error's "Get "<url>":" prefix, which repeats
// what the message already says.
func unwrapURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Err != nil {
		return oe.Err
	}
	return err
}

func decodeError(resp *http.Response, data []byte) error {
	var body errorBody
	if err := json.Unmarshal(data, &body); err == nil && len(body.Errors) > 0 {
		e := body.Errors[0]
		return &APIError{Status: resp.StatusCode, Code: e.Code, Message: e.Message}
	}
	msg := strings.TrimSpace(string(data))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		msg = resp.Status
	}
	return &APIError{Status: resp.StatusCode, Message: fmt.Sprintf("the server answered %s: %s", resp.Status, msg)}
}

// imagePath is the API path of an image.
func imagePath(ref Reference) string { return "images/" + ref.String() }

// Images returns one page of images.
func (c *Client) Images(ctx context.Context, q metadata.ImageQuery) (ImageList, error) {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	set("state", string(q.State))
	set("upstream", q.Upstream)
	set("repository", q.Repository)
	set("after", q.After)
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var list ImageList
	err := c.do(ctx, http.MethodGet, "images", v, nil, &list)
	return list, err
}

// AllImages follows the pages of a listing to its end, in the largest
// pages the server gives unless q.Limit says otherwise.
func (c *Client) AllImages(ctx context.Context, q metadata.ImageQuery) ([]Image, error) {
	if q.Limit == 0 {
		q.Limit = maxLimit
	}
	all := []Image{}
	// A cursor seen before means the server pages in a loop (a bug, or
	// not airlock): following it would never end.
	seen := map[string]bool{q.After: true}
	for {
		page, err := c.Images(ctx, q)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Images...)
		if page.Next == "" {
			return all, nil
		}
		if seen[page.Next] {
			return nil, fmt.Errorf("the server at %s answered page %d of the image list with a cursor it gave before; "+
				"the listing would never end (is that airlock's admin listener?)", c.base, len(seen))
		}
		seen[page.Next] = true
		q.After = page.Next
	}
}

// Image returns one image, by digest or by tag.
func (c *Client) Image(ctx context.Context, ref Reference) (Image, error) {
	var img Image
	err := c.do(ctx, http.MethodGet, imagePath(ref), nil, nil, &img)
	return img, err
}

// SBOM returns the SBOM of a scanned image in format (scanner.FormatSPDX
// or scanner.FormatCycloneDX; empty means SPDX), as the server wrote it.
func (c *Client) SBOM(ctx context.Context, ref Reference, format string) ([]byte, error) {
	format, err := SBOMFormat(format)
	if err != nil {
		return nil, err
	}
	ct, _ := SBOMContentType(format)
	resp, data, err := c.send(ctx, http.MethodGet, imagePath(ref)+"/"+sbomPath, url.Values{"format": {format}}, nil,
		ct+", application/json;q=0.5")
	if err != nil {
		return nil, err
	}
	if got, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); got != ct {
		return nil, fmt.Errorf("the answer of %s is %q, not an SBOM (%s): is %s airlock's admin listener?",
			resp.Request.URL.Path, resp.Header.Get("Content-Type"), ct, c.base)
	}
	return data, nil
}

// Release lets a quarantined image through until expires (see
// [ParseExpiry] for its forms; empty means never).
func (c *Client) Release(ctx context.Context, ref Reference, reason, expires string) (Image, error) {
	return c.change(ctx, ref, "release", ChangeRequest{Reason: reason, Expires: expires})
}

// Block refuses an image whatever the policies say.
func (c *Client) Block(ctx context.Context, ref Reference, reason string) (Image, error) {
	return c.change(ctx, ref, "block", ChangeRequest{Reason: reason})
}

// Unblock lifts a block; the policies decide again.
func (c *Client) Unblock(ctx context.Context, ref Reference, reason string) (Image, error) {
	return c.change(ctx, ref, "unblock", ChangeRequest{Reason: reason})
}

// Rescan runs the image's checks again.
func (c *Client) Rescan(ctx context.Context, ref Reference) (Image, error) {
	return c.change(ctx, ref, "rescan", ChangeRequest{})
}

func (c *Client) change(ctx context.Context, ref Reference, action string, req ChangeRequest) (Image, error) {
	var img Image
	err := c.do(ctx, http.MethodPost, imagePath(ref)+"/"+action, nil, req, &img)
	return img, err
}

// Delete removes an image's record, its cached manifest and the blobs
// nothing else references.
func (c *Client) Delete(ctx context.Context, ref Reference, reason string) error {
	var body any
	if reason != "" {
		body = ChangeRequest{Reason: reason}
	}
	return c.do(ctx, http.MethodDelete, imagePath(ref), nil, body, nil)
}

// Audit returns up to limit audit records after seq after.
func (c *Client) Audit(ctx context.Context, after uint64, limit int) (AuditList, error) {
	v := url.Values{}
	if after > 0 {
		v.Set("after", strconv.FormatUint(after, 10))
	}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	var list AuditList
	err := c.do(ctx, http.MethodGet, "audit", v, nil, &list)
	return list, err
}

// VerifyAudit asks the server to check the audit chain.
func (c *Client) VerifyAudit(ctx context.Context) (metadata.AuditCheck, error) {
	var check metadata.AuditCheck
	err := c.do(ctx, http.MethodGet, "audit/verify", nil, nil, &check)
	return check, err
}
