package upstream

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestPublicMessage: what a client may see names the upstream and what was
// asked, never the cause or the operator's advice.
func TestPublicMessage(t *testing.T) {
	t.Parallel()
	dial := &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 3), Port: 5000}, Err: errors.New("connection refused")}
	secret := errors.New("open /run/secrets/vendor/password: no such file or directory")
	tests := []struct {
		e    *Error
		want string
	}{
		{&Error{Kind: ErrUnavailable, Upstream: "vendor", Op: "manifest", Repo: "app", Ref: "v1", Err: dial}, "upstream vendor is unavailable"},
		{&Error{Kind: ErrDenied, Upstream: "vendor", Op: "blob", Repo: "app", Ref: "sha256:abc", Err: secret, Message: "reading credentials"},
			"airlock could not authenticate to upstream vendor for blob app@sha256:abc"},
		{&Error{Kind: ErrDenied, Upstream: "vendor", Op: "manifest", Repo: "app", Ref: "v1", Status: 401, Code: "UNAUTHORIZED", Message: "token for 10.0.0.3 expired"},
			"upstream vendor denied airlock access to manifest app:v1"},
		{&Error{Kind: ErrNotFound, Upstream: "hub", Op: "manifest", Repo: "library/x", Ref: "1", Status: 404}, "upstream hub has no manifest library/x:1"},
		{&Error{Kind: ErrInvalid, Upstream: "hub", Op: "token", Repo: "app", Err: &refusedError{host: "10.1.1.1", why: "private"}}, "upstream hub sent an invalid response to token for app"},
		{&Error{Kind: ErrRateLimited, Upstream: "hub", Op: "manifest", Status: 429}, "upstream hub is rate limiting airlock; retry later"},
		{&Error{Kind: ErrInvalid, Upstream: "hub", Op: "blob", Repo: "app", Ref: "sha256:abc", Message: "upstream sent airlock to a forbidden address",
			Err: &refusedError{host: "cdn.corp", why: "private"}}, "upstream hub sent an invalid response to blob app@sha256:abc"},
		{&Error{Kind: ErrInvalid, Upstream: "hub", Op: "tags", Repo: "app", Message: "more than 3 tags", public: true}, "upstream hub sent an invalid response to tags app: more than 3 tags"},
	}
	for _, tt := range tests {
		got := tt.e.Public()
		if got != tt.want {
			t.Errorf("Public() = %q, want %q", got, tt.want)
		}
		for _, leak := range []string{"10.0.0.3", "/run/secrets", "dial", "cdn.corp", "check the credentials", "retry later; cached"} {
			if strings.Contains(got, leak) {
				t.Errorf("Public() = %q contains %q", got, leak)
			}
		}
		if full := tt.e.Error(); tt.e.Err != nil && !strings.Contains(full, tt.e.Err.Error()) {
			t.Errorf("Error() = %q lost the cause the log needs", full)
		}
	}
}

// TestUpstreamWordsBounded: what an upstream says about a failure, in its
// error body or its headers, is bounded before it reaches memory or a log
// line.
func TestUpstreamWordsBounded(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 10<<10)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			w.Header().Set("X-Padding", strings.Repeat("x", 2<<20))
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, long, long)
	}))
	r, err := New(Options{Name: "test", URL: srv.URL, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.CloseIdleConnections)
	_, _, err = r.GetManifest(t.Context(), "app", "v1", nil)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("GetManifest: %v", err)
	}
	if len(e.Message) > 520 || len(e.Code) > 70 || !utf8.ValidString(e.Message) || !utf8.ValidString(e.Code) {
		t.Errorf("upstream's error words kept at %d and %d bytes (valid UTF-8: %v)", len(e.Message), len(e.Code), utf8.ValidString(e.Message))
	}
	// The default transport refuses 2 MiB of response headers.
	if _, _, err := r.GetBlob(t.Context(), "app", digestOf(t, "sha256:"+sixtyFourA)); !errors.Is(err, ErrUnavailable) {
		t.Errorf("GetBlob with 2 MiB of headers: %v, want ErrUnavailable", err)
	}
}
