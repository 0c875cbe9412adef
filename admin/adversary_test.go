package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// An expiry past year 9999 cannot be written as JSON: accepting it would
// fail inside the store with an internal error (or, worse, leave memory
// and store apart). It is refused as a bad request, and nothing changes.
func TestAdminAPIExpiryBeyondYear9999(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	before := f.snapshot()
	img := "/api/v1/images/" + f.unpRef + "/release"
	for _, expires := range []string{"9999-12-31", "9999-12-31T23:00:00-05:00", "3000000d"} {
		status, _, data := f.call("POST", img, admintest.AliceToken, `{"reason":"x","expires":"`+expires+`"}`)
		wantError(t, "expiry "+expires, status, data, http.StatusBadRequest, "INVALID", "")
	}
	f.unchanged(before, "expiries beyond year 9999")
	// The last day that can be written still works.
	f.ok("POST", img, `{"reason":"x","expires":"9999-12-30"}`, nil)
}

// A server that answers garbage cursors (alternating, so never the one
// just sent) must not keep the client paging, and growing its listing,
// forever.
func TestClientAllImagesStopsOnCursorLoop(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		next := "a"
		if r.URL.Query().Get("after") == "a" {
			next = "b"
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"images":[{"repository":"hub/x","digest":"sha256:%064d","state":"approved"}],"next":%q}`, n, next)
	}))
	t.Cleanup(srv.Close)
	c, err := admin.NewClient(srv.URL, "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := c.AllImages(ctx, metadata.ImageQuery{}); err == nil || ctx.Err() != nil {
		t.Fatalf("AllImages over a cursor loop = %v (after %d pages), want an error saying the server repeats itself", err, calls.Load())
	}
	if n := calls.Load(); n > 3 {
		t.Errorf("the client asked for %d pages of a two-page loop", n)
	}
}

// A token file saved by a Windows editor starts with a byte order mark and
// ends its lines with CRLF. Neither is part of a name or a token: without
// this, a named first line is "malformed" (the API answers 503) and an
// unnamed one is a token nobody can send.
func TestTokenFileWithByteOrderMark(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for name, content := range map[string]string{
		"named":   "\ufeffalice:" + admintest.AliceToken + "\r\n",
		"unnamed": "\ufeff" + admintest.AliceToken + "\r\n",
	} {
		path := f.Dir + "/bom-tokens-" + name
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		srv, err := admin.New(admin.Options{Store: f.Meta, Decider: f.Gate, TokenFile: path})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequestWithContext(t.Context(), "GET", "/api/v1/audit", nil)
		req.Header.Set("Authorization", "Bearer "+admintest.AliceToken)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Errorf("%s token after a BOM: %d %s", name, rec.Code, rec.Body)
		}
	}
}

// References that try to reach another image or repository through path
// tricks are refused, and nothing changes. (Paths with "..", "." or "//"
// segments are answered by the mux with a 307 to their clean form, which
// names the same image as the CLI would write it: not a trick.)
func TestAdminAPIPathTricks(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	before := f.snapshot()
	d := string(f.unpinned)
	post := func(path, token string) int {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), "POST", f.Admin.URL, strings.NewReader(`{"reason":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = path // sent as written: no cleaning by the client
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, path := range []string{
		"/api/v1/images/hcl%2Fvendor%2F..%2Fapp@" + d + "/release",
		"/api/v1/images/hcl/vendor%252Fapp@" + d + "/release",
		"/api/v1/images/HCL/vendor/app@" + d + "/release",
		"/api/v1/images/hcl/vendor/app@" + strings.ToUpper(d) + "/release",
		"/api/v1/images/hcl/" + strings.Repeat("a/", 200) + "app@" + d + "/release",
		"/api/v1/images/hcl/vendor/app@" + d + "/release/extra",
		"/api/v1/images/hcl/vendor/app@" + d + "%00/release",
		"/api/v1/images/hcl/vendor/app@" + d + "@" + d + "/release",
	} {
		if status := post(path, admintest.AliceToken); status/100 == 2 {
			t.Errorf("POST %s = %d, want a refusal", path, status)
		}
	}
	// Redirected to their clean form, unclean paths still need a token.
	for _, path := range []string{
		"/api/v1/images/hcl/vendor/../vendor/app@" + d + "/release",
		"/api/v1/images/hcl//vendor/app@" + d + "/release",
		"/api/v1/../v1/images/hcl/vendor/app@" + d + "/release",
	} {
		if status := post(path, ""); status != http.StatusUnauthorized {
			t.Errorf("POST %s without a token = %d, want 401", path, status)
		}
	}
	f.unchanged(before, "path tricks")
}
