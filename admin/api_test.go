package admin_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

const repo = "hcl/vendor/app"

// fixture is a harness with one approved (pinned) and one quarantined
// (unpinned) image in hcl/vendor/app, both pulled once.
type fixture struct {
	*admintest.Harness
	t                 *testing.T
	pinned, unpinned  digest.Digest
	pinnedRef, unpRef string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	up := upstreamtest.New(t, upstreamtest.Options{})
	pinned := up.PushImage(t, "vendor/app", "1.0", 256, 1)
	unpinned := up.PushImage(t, "vendor/app", "1.1", 256, 1)
	h := admintest.New(t, up, repo+":1.0 "+pinned.Digest.String()+"\n")
	f := &fixture{Harness: h, t: t, pinned: digest.Digest(pinned.Digest.String()), unpinned: digest.Digest(unpinned.Digest.String())}
	f.pinnedRef, f.unpRef = repo+"@"+string(f.pinned), repo+"@"+string(f.unpinned)
	h.MustPull(repo, "1.0", http.StatusOK)
	h.MustPull(repo, "1.1", http.StatusForbidden)
	return f
}

// call sends one API request with token ("" sends none) and returns the
// status, headers and body.
func (f *fixture) call(method, path, token, body string) (int, http.Header, []byte) {
	f.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(f.t.Context(), method, f.Admin.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, data
}

// ok calls as alice and decodes a 2xx answer into out.
func (f *fixture) ok(method, path, body string, out any) {
	f.t.Helper()
	status, _, data := f.call(method, path, admintest.AliceToken, body)
	if status/100 != 2 {
		f.t.Fatalf("%s %s = %d %s", method, path, status, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			f.t.Fatalf("%s %s: %v in %s", method, path, err, data)
		}
	}
}

type apiErrors struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// wantError checks an error answer's status, code and message.
func wantError(t *testing.T, what string, status int, data []byte, wantStatus int, wantCode, wantMsg string) {
	t.Helper()
	var e apiErrors
	if err := json.Unmarshal(data, &e); err != nil || len(e.Errors) != 1 {
		t.Fatalf("%s: body %s is not one JSON error (%v)", what, data, err)
	}
	if status != wantStatus || e.Errors[0].Code != wantCode || !strings.Contains(e.Errors[0].Message, wantMsg) {
		t.Fatalf("%s = %d %s %q; want %d %s with %q", what, status, e.Errors[0].Code, e.Errors[0].Message, wantStatus, wantCode, wantMsg)
	}
}

// snapshot is what a refused request must leave as it was.
type snapshot struct {
	audit  []metadata.AuditRecord
	images []metadata.Image
}

func (f *fixture) snapshot() snapshot {
	f.t.Helper()
	page, err := f.Meta.Images(f.t.Context(), metadata.ImageQuery{Limit: 1000})
	if err != nil {
		f.t.Fatal(err)
	}
	return snapshot{audit: f.Audit(), images: page.Images}
}

func (f *fixture) unchanged(before snapshot, what string) {
	f.t.Helper()
	after := f.snapshot()
	a, _ := json.Marshal(before)
	b, _ := json.Marshal(after)
	if !bytes.Equal(a, b) {
		f.t.Fatalf("%s changed the store:\nbefore %s\nafter  %s", what, a, b)
	}
	// And the gate, which answers pulls from memory, still refuses.
	if status, _ := f.Pull(repo, string(f.unpinned)); status != http.StatusForbidden {
		f.t.Fatalf("%s: the quarantined image now pulls with %d", what, status)
	}
}

// TestAdminAPIUnauthorized sends every endpoint without a token, with a
// wrong one and with the wrong scheme: each is 401 with a challenge, and
// nothing changes.
func TestAdminAPIUnauthorized(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	before := f.snapshot()
	release := `{"reason":"let it in"}`
	requests := []struct{ method, path, body string }{
		{"GET", "/api/v1/images", ""},
		{"GET", "/api/v1/images/" + f.unpRef, ""},
		{"GET", "/api/v1/images/" + f.unpRef + "/sbom?format=cyclonedx", ""},
		{"POST", "/api/v1/images/" + f.unpRef + "/release", release},
		{"POST", "/api/v1/images/" + f.pinnedRef + "/block", release},
		{"POST", "/api/v1/images/" + f.unpRef + "/rescan", ""},
		{"DELETE", "/api/v1/images/" + f.unpRef, ""},
		{"GET", "/api/v1/audit", ""},
		{"GET", "/api/v1/audit/verify", ""},
		{"GET", "/api/v1/no-such-endpoint", ""},
	}
	credentials := []struct{ name, header string }{
		{"no header", ""},
		{"wrong token", "Bearer not-a-token"},
		{"a token's prefix", "Bearer " + admintest.AliceToken[:10]},
		{"name:token form", "Bearer alice:" + admintest.AliceToken},
		{"basic auth", "Basic YWxpY2U6" + admintest.AliceToken},
	}
	for _, r := range requests {
		for _, c := range credentials {
			req, _ := http.NewRequestWithContext(t.Context(), r.method, f.Admin.URL+r.path, strings.NewReader(r.body))
			if c.header != "" {
				req.Header.Set("Authorization", c.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// Past the throttle's window: this test is about the answer
			// to each kind of credential, TestAdminAPIThrottle about
			// their number.
			f.Clock.Advance(admin.ThrottleWindow)
			what := r.method + " " + r.path + " with " + c.name
			wantError(t, what, resp.StatusCode, data, http.StatusUnauthorized, "UNAUTHORIZED", "")
			if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="airlock-admin"` {
				t.Fatalf("%s: WWW-Authenticate %q", what, got)
			}
			if bytes.Contains(data, []byte(admintest.AliceToken[:10])) {
				t.Fatalf("%s: the answer repeats the token: %s", what, data)
			}
		}
	}
	f.unchanged(before, "unauthenticated requests")
	logs := f.Logs()
	if !strings.Contains(logs, "admin API request refused") || strings.Contains(logs, admintest.AliceToken[:10]) ||
		strings.Contains(logs, "not-a-token") {
		t.Fatalf("the log should record refusals and never a token:\n%s", logs)
	}
}

// TestAdminAPIThrottle guesses tokens against the API: five wrong ones
// are answered 401, then the address is refused with 429 and Retry-After
// whatever it sends, the right token included, until the window has
// passed, and logged once rather than per guess. Requests without a token
// are no guesses and log no warning, and right tokens sent at once are
// never refused.
func TestAdminAPIThrottle(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for range 10 {
		status, _, data := f.call("GET", "/api/v1/images", "", "")
		wantError(t, "no token", status, data, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
	}
	for i := range admin.MaxWrongTokens - 1 {
		status, _, data := f.call("GET", "/api/v1/images", fmt.Sprintf("guess-%d", i), "")
		wantError(t, "wrong token", status, data, http.StatusUnauthorized, "UNAUTHORIZED", "not one of")
	}
	var wg sync.WaitGroup
	statuses := make(chan int, 30)
	for range 30 {
		wg.Go(func() {
			status, _, _ := f.call("GET", "/api/v1/images", admintest.AliceToken, "")
			statuses <- status
		})
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != http.StatusOK {
			t.Fatalf("a right token sent with 29 others, one wrong token short of the limit, got %d", s)
		}
	}
	status, _, data := f.call("GET", "/api/v1/images", "guess-last", "")
	wantError(t, "fifth wrong token", status, data, http.StatusUnauthorized, "UNAUTHORIZED", "not one of")
	before := f.snapshot()
	for range 20 {
		status, hdr, data := f.call("POST", "/api/v1/images/"+f.unpRef+"/release", admintest.AliceToken, `{"reason":"in"}`)
		wantError(t, "the right token after five wrong ones", status, data, http.StatusTooManyRequests, "TOO_MANY_REQUESTS", "too many wrong tokens")
		if ra, err := strconv.Atoi(hdr.Get("Retry-After")); err != nil || ra < 1 || ra > 61 {
			t.Fatalf("Retry-After %q, want the seconds left of the window", hdr.Get("Retry-After"))
		}
	}
	f.unchanged(before, "requests from a throttled address")
	logs := f.Logs()
	if n := strings.Count(logs, "refusing tokens from a client"); n != 1 {
		t.Errorf("the throttle's refusal is logged %d times, want once:\n%s", n, logs)
	}
	if n := strings.Count(logs, "level=WARN msg=\"admin API request refused\""); n != admin.MaxWrongTokens {
		t.Errorf("%d refusals logged as warnings, want one per checked guess (%d), none for requests without a token or refused unchecked:\n%s", n, admin.MaxWrongTokens, logs)
	}
	f.Clock.Advance(admin.ThrottleWindow)
	if status, _, data := f.call("GET", "/api/v1/images", admintest.AliceToken, ""); status != http.StatusOK {
		t.Fatalf("the right token once the window has passed = %d %s", status, data)
	}
}

// TestAdminAPITokenFileProblems covers an API without admin.tokenFile and
// one whose file cannot be read: refused with a message that says so, and
// nothing changes. No throttle counts these refusals, so the log holds one
// warning a minute of each, however many requests come, and the next says
// how many were held back.
func TestAdminAPITokenFileProblems(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	before := f.snapshot()
	tests := []struct {
		name       string
		tokenFile  string
		wantStatus int
		wantCode   string
		wantMsg    string
	}{
		{"not set", "", http.StatusUnauthorized, "UNAUTHORIZED", "admin.tokenFile is not set"},
		{"missing", f.Dir + "/no-such-file", http.StatusServiceUnavailable, "UNAVAILABLE", "admin.tokenFile cannot be used: it cannot be read"},
		{"a directory", f.Dir, http.StatusServiceUnavailable, "UNAVAILABLE", "cannot be read"},
		{"malformed", writeFile(t, f.Dir+"/bad-tokens", "alice:\n"), http.StatusServiceUnavailable, "UNAVAILABLE", "line 1: no token after the name"},
		{"empty", writeFile(t, f.Dir+"/empty-tokens", "# nobody yet\n"), http.StatusUnauthorized, "UNAUTHORIZED", "holds no tokens"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer // ServeHTTP is called from this goroutine only
			clock := &admintest.Clock{}
			srv, err := admin.New(admin.Options{Store: f.Meta, Decider: f.Gate, TokenFile: tc.tokenFile,
				Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 50 {
				for _, r := range []struct{ method, path, body string }{
					{"GET", "/api/v1/images", ""},
					{"POST", "/api/v1/images/" + f.unpRef + "/release", `{"reason":"x"}`},
				} {
					req, _ := http.NewRequestWithContext(t.Context(), r.method, r.path, strings.NewReader(r.body))
					req.Header.Set("Authorization", fmt.Sprintf("Bearer %s-%d", admintest.AliceToken, i%2))
					if i == 0 {
						req.Header.Set("Authorization", "Bearer "+admintest.AliceToken)
					}
					rec := newRecorder()
					srv.ServeHTTP(rec, req)
					wantError(t, r.method+" "+r.path, rec.status, rec.body.Bytes(), tc.wantStatus, tc.wantCode, tc.wantMsg)
				}
				if i == 0 {
					clock.Advance(time.Second) // held back within the minute
				}
			}
			const warn = `level=WARN msg="admin API request refused"`
			if n := strings.Count(logs.String(), warn); n != 1 {
				t.Fatalf("100 refusals logged %d warnings, want 1:\n%s", n, logs.String())
			}
			if !strings.Contains(logs.String(), tc.wantMsg) {
				t.Errorf("the warning does not say what is wrong (%q):\n%s", tc.wantMsg, logs.String())
			}
			clock.Advance(admin.ThrottleWindow)
			req, _ := http.NewRequestWithContext(t.Context(), "GET", "/api/v1/images", nil)
			req.Header.Set("Authorization", "Bearer "+admintest.AliceToken)
			srv.ServeHTTP(newRecorder(), req)
			if n := strings.Count(logs.String(), warn); n != 2 || !strings.Contains(logs.String(), "held_back=99") {
				t.Errorf("a minute later: %d warnings, want 2, the second saying 99 were held back:\n%s", n, logs.String())
			}
		})
	}
	f.unchanged(before, "requests to a server with a bad token file")
}

func writeFile(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// recorder is the smallest ResponseWriter, to call a Server directly.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder                    { return &recorder{header: http.Header{}} }
func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(s int)           { r.status = s }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }

var _ http.ResponseWriter = (*recorder)(nil)

// TestAdminAPIReleaseBlockAudit walks the admin's day: list what was
// quarantined and why, release it with an expiry, block an approved
// image, read the audit log and verify it.
func TestAdminAPIReleaseBlockAudit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)

	var list admin.ImageList
	f.ok("GET", "/api/v1/images?state=quarantined", "", &list)
	if len(list.Images) != 1 || list.Images[0].Digest != f.unpinned || list.Next != "" {
		t.Fatalf("quarantined: %+v", list)
	}
	q := list.Images[0]
	if q.Repository != repo || q.State != metadata.StateQuarantined || !slices.Equal(q.Tags, []string{"1.1"}) ||
		len(q.Reasons) != 1 || q.Reasons[0].Type != metadata.ReasonPolicy || q.Reasons[0].Policy != "hcl-pinned" ||
		q.FirstSeen.IsZero() || q.UpdatedAt.IsZero() || q.CachedBytes == nil {
		t.Fatalf("quarantined image: %+v", q)
	}
	// The JSON has the fields the issue fixes, with arrays, never null.
	_, _, raw := f.call("GET", "/api/v1/images?state=approved", admintest.AliceToken, "")
	var rawList struct{ Images []map[string]json.RawMessage }
	if err := json.Unmarshal(raw, &rawList); err != nil || len(rawList.Images) != 1 {
		t.Fatalf("approved list %s: %v", raw, err)
	}
	for _, k := range []string{"repository", "digest", "tags", "state", "reasons", "firstSeen", "updatedAt", "cachedBytes"} {
		if _, ok := rawList.Images[0][k]; !ok {
			t.Errorf("image JSON lacks %q: %s", k, raw)
		}
	}
	if string(rawList.Images[0]["reasons"]) != "[]" {
		t.Errorf("an approved image's reasons = %s; want []", rawList.Images[0]["reasons"])
	}

	// One image, by digest and by tag.
	var byTag, byDigest admin.Image
	f.ok("GET", "/api/v1/images/"+repo+":1.1", "", &byTag)
	f.ok("GET", "/api/v1/images/"+f.unpRef, "", &byDigest)
	if byTag.Digest != f.unpinned || byDigest.Digest != f.unpinned {
		t.Fatalf("by tag %s, by digest %s; want %s", byTag.Digest, byDigest.Digest, f.unpinned)
	}

	// Release through a date: it holds through that day, UTC.
	day := f.Clock.Now().AddDate(0, 0, 30).Format(time.DateOnly)
	var released admin.Image
	f.ok("POST", "/api/v1/images/"+f.unpRef+"/release", `{"reason":"vendor confirmed the build","expires":"`+day+`"}`, &released)
	wantEnd, _ := time.Parse(time.DateOnly, day)
	wantEnd = wantEnd.AddDate(0, 0, 1)
	if released.State != metadata.StateReleased || released.Override == nil || !released.Override.Expires.Equal(wantEnd) ||
		released.Override.By != "admin:alice" {
		t.Fatalf("released: %+v %+v", released, released.Override)
	}
	f.MustPull(repo, string(f.unpinned), http.StatusOK)

	// Block the approved image with the unnamed token.
	sum := sha256.Sum256([]byte(admintest.UnnamedToken))
	unnamed := "admin:token-" + hex.EncodeToString(sum[:4])
	status, _, data := f.call("POST", "/api/v1/images/"+f.pinnedRef+"/block", admintest.UnnamedToken, `{"reason":"CVE-2026-0001 in the base layer"}`)
	var blocked admin.Image
	if status != http.StatusOK || json.Unmarshal(data, &blocked) != nil || blocked.State != metadata.StateBlocked {
		t.Fatalf("block = %d %s", status, data)
	}
	f.MustPull(repo, "1.0", http.StatusForbidden)

	var unblocked admin.Image
	f.ok("POST", "/api/v1/images/"+f.pinnedRef+"/unblock", `{"reason":"false positive"}`, &unblocked)
	if unblocked.State != metadata.StateApproved {
		t.Fatalf("unblocked: %+v", unblocked)
	}
	var rescanned admin.Image
	f.ok("POST", "/api/v1/images/"+f.pinnedRef+"/rescan", `{}`, &rescanned)
	if rescanned.State != metadata.StateApproved {
		t.Fatalf("rescanned: %+v", rescanned)
	}

	// The audit log, page by page, in order, with each actor.
	var recs []metadata.AuditRecord
	for after := uint64(0); ; {
		var page admin.AuditList
		f.ok("GET", "/api/v1/audit?limit=2&after="+itoa(after), "", &page)
		recs = append(recs, page.Records...)
		if page.Next == 0 {
			break
		}
		after = page.Next
	}
	type step struct{ actor, action, to string }
	var got []step
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i, r.Seq)
		}
		got = append(got, step{r.Actor, r.Action, string(r.To)})
	}
	want := []step{
		{"policy", "decide", "approved"}, {"policy", "decide", "quarantined"},
		{"admin:alice", "release", "released"},
		{unnamed, "block", "blocked"}, {"admin:alice", "unblock", "approved"}, {"admin:alice", "rescan", "approved"},
	}
	if len(got) < len(want) {
		t.Fatalf("audit %+v; want at least %+v", got, want)
	}
	// The first two records are the policy's, whatever it calls its
	// actor and action; the admin's follow in order.
	if got[0].to != "approved" || got[1].to != "quarantined" || !slices.Equal(got[2:], want[2:]) {
		t.Fatalf("audit:\n got %+v\nwant %+v", got, want)
	}
	if recs[2].Reason != "vendor confirmed the build" || !recs[2].Expires.Equal(wantEnd) {
		t.Fatalf("release record: %+v", recs[2])
	}

	// The log has each change with its actor, and no token.
	logs := f.Logs()
	for _, want := range []string{
		`msg="admin change" actor=admin:alice action=release repository=hcl/vendor/app digest=` + string(f.unpinned) +
			` reason="vendor confirmed the build"`,
		`msg="admin change" actor=` + unnamed + ` action=block`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, admintest.AliceToken) || strings.Contains(logs, admintest.UnnamedToken) {
		t.Errorf("the log holds a token:\n%s", logs)
	}

	var check metadata.AuditCheck
	f.ok("GET", "/api/v1/audit/verify", "", &check)
	if !check.OK || check.Records != uint64(len(recs)) || check.Head != recs[len(recs)-1].Hash {
		t.Fatalf("verify: %+v; want ok with %d records and head %s", check, len(recs), recs[len(recs)-1].Hash)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// TestAdminAPIRefusals sends the bad requests of the issue and more: each
// gets its 4xx with a clear JSON error, and nothing changes.
func TestAdminAPIRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	before := f.snapshot()
	unknown := digest.FromString("never pulled")
	img := "/api/v1/images/"
	past := f.Clock.Now().AddDate(0, 0, -1).Format(time.DateOnly)
	tests := []struct {
		name, method, path, body string
		status                   int
		code, msg                string
	}{
		{"unknown digest", "POST", img + repo + "@" + string(unknown) + "/release", `{"reason":"x"}`, 404, "NOT_FOUND", "has not seen"},
		{"unknown image", "GET", img + repo + "@" + string(unknown), "", 404, "NOT_FOUND", "has not seen"},
		{"unknown tag", "GET", img + repo + ":9.9", "", 404, "NOT_FOUND", "no tag hcl/vendor/app:9.9"},
		{"delete unknown", "DELETE", img + repo + "@" + string(unknown), "", 404, "NOT_FOUND", ""},
		{"no upstream in the reference", "POST", img + "app@" + string(f.unpinned) + "/release", `{"reason":"x"}`, 400, "INVALID", "does not name its upstream"},
		{"malformed digest", "POST", img + repo + "@sha256:1234/release", `{"reason":"x"}`, 400, "INVALID", "invalid digest"},
		{"uppercase repository", "GET", img + "hcl/Vendor/app:1.1", "", 400, "INVALID", "path component"},
		{"tag for a change", "POST", img + repo + ":1.1/release", `{"reason":"x"}`, 400, "INVALID", "needs the image's digest"},
		{"missing reason", "POST", img + f.unpRef + "/release", `{}`, 400, "INVALID", "needs a reason"},
		{"blank reason", "POST", img + f.pinnedRef + "/block", `{"reason":"  "}`, 400, "INVALID", "needs a reason"},
		{"no body", "POST", img + f.unpRef + "/release", "", 400, "INVALID", "needs a reason"},
		{"expiry in the past", "POST", img + f.unpRef + "/release", `{"reason":"x","expires":"` + past + `"}`, 400, "INVALID", "in the past"},
		{"unparsable expiry", "POST", img + f.unpRef + "/release", `{"reason":"x","expires":"next friday"}`, 400, "INVALID", "not a date"},
		{"expiry on a block", "POST", img + f.pinnedRef + "/block", `{"reason":"x","expires":"72h"}`, 400, "INVALID", "only a release expires"},
		{"reason on a rescan", "POST", img + f.pinnedRef + "/rescan", `{"reason":"x"}`, 400, "INVALID", "takes no reason"},
		{"unknown field", "POST", img + f.unpRef + "/release", `{"reason":"x","expiry":"72h"}`, 400, "INVALID", `unknown field "expiry"`},
		{"two objects", "POST", img + f.unpRef + "/release", `{"reason":"x"}{"reason":"y"}`, 400, "INVALID", "more than one"},
		{"not JSON", "POST", img + f.unpRef + "/release", `reason=x`, 400, "INVALID", "not the JSON"},
		{"huge body", "POST", img + f.unpRef + "/release", `{"reason":"` + strings.Repeat("x", 70<<10) + `"}`, 413, "TOO_LARGE", "larger than"},
		{"block in an unknown repository", "POST", img + "nowhere/app@" + string(unknown) + "/block", `{"reason":"x"}`, 404, "NOT_FOUND", "not served by airlock"},
		{"release of an approved image", "POST", img + f.pinnedRef + "/release", `{"reason":"x"}`, 409, "CONFLICT", "is approved"},
		{"unblock of an image not blocked", "POST", img + f.unpRef + "/unblock", `{"reason":"x"}`, 409, "CONFLICT", "is not blocked"},
		{"unknown action", "POST", img + f.unpRef + "/approve", `{"reason":"x"}`, 404, "NOT_FOUND", `no image action "approve"`},
		{"GET an action", "GET", img + f.unpRef + "/release", "", 405, "METHOD_NOT_ALLOWED", "use POST"},
		{"PUT an image", "PUT", img + f.unpRef, `{}`, 405, "METHOD_NOT_ALLOWED", "GET and DELETE"},
		{"POST the list", "POST", "/api/v1/images", `{}`, 405, "METHOD_NOT_ALLOWED", "use GET"},
		{"DELETE the audit log", "DELETE", "/api/v1/audit", "", 405, "METHOD_NOT_ALLOWED", "use GET"},
		{"POST the audit log", "POST", "/api/v1/audit", `{"actor":"me"}`, 405, "METHOD_NOT_ALLOWED", "use GET"},
		{"unknown state", "GET", "/api/v1/images?state=rejected", "", 400, "INVALID", `unknown state "rejected"`},
		{"bad limit", "GET", "/api/v1/images?limit=0", "", 400, "INVALID", "limit"},
		{"bad upstream", "GET", "/api/v1/images?upstream=Hub", "", 400, "INVALID", "invalid upstream"},
		{"bad audit cursor", "GET", "/api/v1/audit?after=-1", "", 400, "INVALID", "not a record number"},
		{"unknown endpoint", "GET", "/api/v1/repositories", "", 404, "NOT_FOUND", "no admin API endpoint"},
	}
	for _, tc := range tests {
		status, h, data := f.call(tc.method, tc.path, admintest.AliceToken, tc.body)
		wantError(t, tc.name, status, data, tc.status, tc.code, tc.msg)
		if tc.status == 405 && h.Get("Allow") == "" {
			t.Errorf("%s: 405 without Allow", tc.name)
		}
	}
	f.unchanged(before, "refused requests")
	if logs := f.Logs(); !strings.Contains(logs, `msg="admin change refused" actor=admin:alice method=POST path=/api/v1/images/`+f.unpRef+"/release status=400") {
		t.Errorf("refused changes are not logged with their actor:\n%s", logs)
	}
}

// TestAdminAPIListFiltersAndPages lists across pages and filters by
// upstream and repository.
func TestAdminAPIListFiltersAndPages(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	h := admintest.New(t, up, "")
	f := &fixture{Harness: h, t: t}
	for _, name := range []string{"a", "b", "c"} {
		up.PushImage(t, "lib/"+name, "1", 64, 1)
		up.PushImage(t, "lib/"+name, "2", 64, 1)
		h.MustPull("hub/lib/"+name, "1", http.StatusOK)
		h.MustPull("hub/lib/"+name, "2", http.StatusOK)
	}
	up.PushImage(t, "vendor/x", "1", 64, 1)
	h.MustPull("hcl/vendor/x", "1", http.StatusForbidden) // nothing pinned

	var all []admin.Image
	pages := 0
	for after := ""; ; {
		var page admin.ImageList
		f.ok("GET", "/api/v1/images?limit=2&after="+after, "", &page)
		pages++
		all = append(all, page.Images...)
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if len(all) != 7 || pages != 4 {
		t.Fatalf("listed %d images in %d pages; want 7 in 4", len(all), pages)
	}
	seen := map[string]bool{}
	for _, img := range all {
		k := img.Repository + "@" + string(img.Digest)
		if seen[k] {
			t.Fatalf("%s listed twice", k)
		}
		seen[k] = true
	}
	for _, tc := range []struct {
		query string
		want  int
	}{
		{"upstream=hub", 6}, {"upstream=hcl", 1}, {"repository=hub/lib/b", 2},
		{"state=quarantined", 1}, {"state=approved&upstream=hub", 6}, {"state=blocked", 0},
	} {
		var page admin.ImageList
		f.ok("GET", "/api/v1/images?"+tc.query, "", &page)
		if len(page.Images) != tc.want || page.Images == nil {
			t.Errorf("%s: %d images (%v); want %d", tc.query, len(page.Images), page.Images == nil, tc.want)
		}
	}
}

// TestAdminAPIDelete removes a quarantined image: 204, then 404, audited.
func TestAdminAPIDelete(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	status, _, data := f.call("DELETE", "/api/v1/images/"+f.unpRef, admintest.AliceToken, `{"reason":"not needed"}`)
	if status != http.StatusNoContent || len(data) != 0 {
		t.Fatalf("DELETE = %d %s; want 204", status, data)
	}
	status, _, data = f.call("GET", "/api/v1/images/"+f.unpRef, admintest.AliceToken, "")
	wantError(t, "GET after DELETE", status, data, 404, "NOT_FOUND", "has not seen")
	recs := f.Audit()
	last := recs[len(recs)-1]
	if last.Action != "delete" || last.Actor != "admin:alice" || last.Reason != "not needed" || last.Digest != f.unpinned ||
		last.To != metadata.StateNone {
		t.Fatalf("last audit record: %+v", last)
	}
}
