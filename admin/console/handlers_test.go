package console_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/admin/console"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestSignIn: the console sends the unsigned to its sign-in form, refuses
// a wrong token and a form without its CSRF token, and signs in with a
// token of admin.tokenFile into a cookie that scripts and other sites
// cannot use.
func TestSignIn(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()

	a := b.get("/ui/images?state=quarantined")
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/ui/login?next=%2Fui%2Fimages%3Fstate%3Dquarantined" {
		t.Fatalf("unsigned GET = %d to %q; want 303 to the sign-in form", a.status, a.header.Get("Location"))
	}
	login := b.get("/ui/login")
	wantStatus(t, "sign-in form", login, http.StatusOK, `name="token"`, `type="password"`, `<label for="token">`)
	csrf := csrfOf(t, login.body)

	for _, tc := range []struct {
		name   string
		token  string
		csrf   string // "ok": the form's, else sent as is
		status int
		says   string
	}{
		{"wrong token", "alice-wrong", "ok", http.StatusUnauthorized, "not one of admin.tokenFile&#39;s tokens"},
		{"empty token", "", "ok", http.StatusUnauthorized, "authentication required"},
		{"no CSRF token", admintest.AliceToken, "", http.StatusForbidden, "did not come from this page"},
		{"wrong CSRF token", admintest.AliceToken, "forged", http.StatusForbidden, "did not come from this page"},
	} {
		form := url.Values{"token": {tc.token}}
		switch tc.csrf {
		case "ok":
			form.Set("csrf", csrf)
		case "":
		default:
			form.Set("csrf", tc.csrf)
		}
		a := b.post("/ui/login", form)
		wantStatus(t, tc.name, a, tc.status, tc.says)
		for _, c := range a.header.Values("Set-Cookie") {
			if strings.HasPrefix(c, "airlock_console=") {
				t.Fatalf("%s: a session cookie was set: %s", tc.name, c)
			}
		}
		if strings.Contains(a.body, "alice-wrong") {
			t.Fatalf("%s: the page repeats the token typed", tc.name)
		}
		csrf = csrfOf(t, a.body) // each form comes with a fresh one
	}

	a = b.post("/ui/login", url.Values{"csrf": {csrf}, "token": {admintest.AliceToken}, "next": {"//evil.example/"}})
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/ui/" {
		t.Fatalf("sign-in = %d to %q; want 303 to /ui/ (an off-site next is ignored)", a.status, a.header.Get("Location"))
	}
	var session *http.Cookie
	for _, c := range (&http.Response{Header: a.header}).Cookies() {
		if c.Name == "airlock_console" {
			session = c
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Secure ||
		session.Path != "/ui/" || session.MaxAge <= 0 || session.MaxAge > 8*3600 {
		t.Fatalf("session cookie = %+v; want HttpOnly, SameSite=Strict, not Secure over plain HTTP, path /ui/, expiring within 8h", session)
	}
	if strings.Contains(session.Value, admintest.AliceToken) {
		t.Fatal("the session cookie holds the token")
	}
	wantStatus(t, "overview", b.get("/ui/"), http.StatusOK, "admin:alice", "Sign out")

	// A cookie made up by someone else opens nothing.
	forged := f.browser()
	forged.jar.SetCookies(mustURL(t, f.srv.URL+"/ui/"), []*http.Cookie{{Name: "airlock_console", Value: session.Value + "x"}})
	if a := forged.get("/ui/"); a.status != http.StatusSeeOther {
		t.Fatalf("a forged session cookie got %d", a.status)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestSignInThrottled: after five failed sign-ins within a minute the
// address must wait, even with the right token.
func TestSignInThrottled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	csrf := csrfOf(t, b.get("/ui/login").body)
	for range 5 {
		a := b.post("/ui/login", url.Values{"csrf": {csrf}, "token": {"guess"}})
		wantStatus(t, "wrong token", a, http.StatusUnauthorized, "not one of")
		csrf = csrfOf(t, a.body)
	}
	a := b.post("/ui/login", url.Values{"csrf": {csrf}, "token": {admintest.AliceToken}})
	wantStatus(t, "sign-in after five failures", a, http.StatusTooManyRequests, "Too many failed sign-ins")
	if a.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
	// The API shares the limit (as serve wires them): it is no way around
	// the console's.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, f.h.Admin.URL+"/api/v1/images", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+admintest.AliceToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("the API after five failed console sign-ins from the address = %d, want 429", resp.StatusCode)
	}
	f.h.Clock.Advance(61 * time.Second)
	if a := b.post("/ui/login", url.Values{"csrf": {csrfOf(t, a.body)}, "token": {admintest.AliceToken}}); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in a minute later = %d", a.status)
	}
}

// TestSecureCookieUnderTLS: over TLS the session cookie is Secure.
func TestSecureCookieUnderTLS(t *testing.T) {
	t.Parallel()
	f := newFixture(t, true)
	b := f.browser()
	login := b.get("/ui/login")
	a := b.post("/ui/login", url.Values{"csrf": {csrfOf(t, login.body)}, "token": {admintest.AliceToken}})
	if a.status != http.StatusSeeOther {
		t.Fatalf("sign-in over TLS = %d", a.status)
	}
	for _, c := range (&http.Response{Header: a.header}).Cookies() {
		if c.Name == "airlock_console" && (!c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode) {
			t.Fatalf("session cookie over TLS = %+v; want Secure, HttpOnly, SameSite=Strict", c)
		}
	}
}

// TestReleaseAndBlock: the image page shows the state as a word and the
// fixed forms; a change needs the session's CSRF token and a confirmation,
// and is audited under the signed-in token's name.
func TestReleaseAndBlock(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	csrf := b.signIn(admintest.AliceToken)
	page := imagePath(appRepo, f.quarantined)

	a := b.get(page)
	wantStatus(t, "image page", a, http.StatusOK, `id="state">quarantined<`, "policy hcl-pinned", "tag 1.1",
		`action="`+page+`/release"`, `name="reason"`, `name="expires"`, `>Release</button>`,
		`action="`+page+`/block"`, `>Block</button>`)

	// Without the CSRF token, or with another's, nothing happens.
	for _, form := range []url.Values{
		{"reason": {"x"}, "confirm": {"yes"}},
		{"reason": {"x"}, "confirm": {"yes"}, "csrf": {"forged"}},
	} {
		wantStatus(t, "release without CSRF", b.post(page+"/release", form), http.StatusForbidden, "CSRF")
	}
	if img := f.image(appRepo, f.quarantined); img.State != metadata.StateQuarantined {
		t.Fatalf("after refused posts the image is %s", img.State)
	}
	// A cross-site post is refused before the form is read.
	a = b.do(http.MethodPost, page+"/release", url.Values{"csrf": {csrf}, "reason": {"x"}, "confirm": {"yes"}},
		"Sec-Fetch-Site", "cross-site")
	if a.status != http.StatusForbidden {
		t.Fatalf("a cross-site post = %d; want 403", a.status)
	}

	// The first post asks for confirmation and changes nothing.
	until := f.h.Clock.Now().AddDate(0, 0, 30).Format(time.DateOnly)
	form := url.Values{"csrf": {csrf}, "reason": {"vendor confirmed in SEC-1"}, "expires": {until}}
	wantStatus(t, "release", b.post(page+"/release", form), http.StatusOK, "Confirm release", `name="confirm" value="yes"`,
		"vendor confirmed in SEC-1")
	if img := f.image(appRepo, f.quarantined); img.State != metadata.StateQuarantined {
		t.Fatalf("before confirmation the image is %s", img.State)
	}
	form.Set("confirm", "yes")
	a = b.post(page+"/release", form)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != page {
		t.Fatalf("confirmed release = %d to %q; want 303 to the image", a.status, a.header.Get("Location"))
	}
	wantStatus(t, "released image", b.get(page), http.StatusOK, `id="state">released<`, "Release done",
		"Recorded in the audit log as admin:alice")
	img := f.image(appRepo, f.quarantined)
	wantEnd, _ := time.Parse(time.DateOnly, until)
	if img.State != metadata.StateReleased || img.Override.By != "admin:alice" || !img.Override.Expires.Equal(wantEnd.AddDate(0, 0, 1)) {
		t.Fatalf("released image = %s %+v; want released by admin:alice through %s", img.State, img.Override, until)
	}
	last := f.lastAudit()
	if last.Actor != "admin:alice" || last.Action != "release" || last.Reason != "vendor confirmed in SEC-1" || last.To != metadata.StateReleased {
		t.Fatalf("last audit record = %+v", last)
	}
	// The result shows once.
	if a := b.get(page); strings.Contains(a.body, "Release done") {
		t.Fatal("the result is shown again on the next page")
	}

	// Block the approved image; the unnamed token acts under its hash.
	other := f.browser()
	csrf2 := other.signIn(admintest.UnnamedToken)
	approved := imagePath(appRepo, f.approved)
	a = other.post(approved+"/block", url.Values{"csrf": {csrf2}, "reason": {"recalled by the vendor"}, "confirm": {"yes"}})
	if a.status != http.StatusSeeOther {
		t.Fatalf("confirmed block = %d %.500s", a.status, a.body)
	}
	if last := f.lastAudit(); last.Action != "block" || !strings.HasPrefix(last.Actor, "admin:token-") {
		t.Fatalf("block audited as %+v; want the unnamed token's actor", last)
	}
	// A session's CSRF token is its own.
	a = other.post(approved+"/unblock", url.Values{"csrf": {csrf}, "reason": {"x"}, "confirm": {"yes"}})
	wantStatus(t, "unblock with another session's CSRF token", a, http.StatusForbidden, "CSRF")

	// Rescan and unblock through the same path.
	a = other.post(approved+"/unblock", url.Values{"csrf": {csrf2}, "reason": {"vendor re-issued it"}, "confirm": {"yes"}})
	if a.status != http.StatusSeeOther || f.image(appRepo, f.approved).State != metadata.StateApproved {
		t.Fatalf("unblock = %d, state %s", a.status, f.image(appRepo, f.approved).State)
	}
	a = other.post(approved+"/rescan", url.Values{"csrf": {csrf2}, "confirm": {"yes"}})
	if a.status != http.StatusSeeOther || f.lastAudit().Action != "rescan" {
		t.Fatalf("rescan = %d, last record %+v", a.status, f.lastAudit())
	}

	// A conflict is shown on the page, as the API words it.
	a = other.post(approved+"/release", url.Values{"csrf": {csrf2}, "reason": {"x"}, "confirm": {"yes"}})
	wantStatus(t, "release of an approved image", a, http.StatusConflict, "nothing to release")

	// The audit page lists the changes and verifies the chain.
	wantStatus(t, "audit", b.get("/ui/audit?actor=alice"), http.StatusOK, "Chain verified", "vendor confirmed in SEC-1")
	if a := b.get("/ui/audit?actor=alice"); strings.Contains(a.body, "recalled by the vendor") {
		t.Fatal("the actor filter let another actor's record through")
	}
	wantStatus(t, "audit by action", b.get("/ui/audit?action=block"), http.StatusOK, "recalled by the vendor")
}

// TestInputValidation: malformed input gets a 4xx page that says what is
// wrong, and nothing changes.
func TestInputValidation(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	csrf := b.signIn(admintest.AliceToken)
	page := imagePath(appRepo, f.quarantined)
	before := len(f.h.Audit())

	for _, tc := range []struct {
		name, method, path string
		form               url.Values
		status             int
		says               string
	}{
		{"release without reason", "POST", page + "/release", url.Values{"reason": {"  "}}, 400, "needs a reason"},
		{"expiry in the past", "POST", page + "/release", url.Values{"reason": {"x"}, "expires": {"2001-01-01"}}, 400, "in the past"},
		{"expiry unreadable", "POST", page + "/release", url.Values{"reason": {"x"}, "expires": {"soon"}}, 400, "is not a date"},
		{"block with expiry", "POST", page + "/block", url.Values{"reason": {"x"}, "expires": {"30d"}}, 400, "Only a release expires"},
		{"rescan with reason", "POST", page + "/rescan", url.Values{"reason": {"x"}}, 400, "takes no reason"},
		{"reason too long", "POST", page + "/block", url.Values{"reason": {strings.Repeat("x", 5000)}}, 400, "too long"},
		{"unknown action", "POST", page + "/approve", url.Values{}, 404, "no console page"},
		{"GET an action", "GET", page + "/release", nil, 405, "use POST"},
		{"unknown image", "GET", imagePath(appRepo, digest.Digest("sha256:"+strings.Repeat("0", 64))), nil, 404, "has not seen"},
		{"malformed digest", "GET", "/ui/images/" + appRepo + "@sha256:abc", nil, 400, "invalid digest"},
		{"no digest", "GET", "/ui/images/" + appRepo + ":1.1", nil, 404, "by digest"},
		{"unknown page", "GET", "/ui/settings", nil, 404, "no console page"},
		{"bad state filter", "GET", "/ui/images?state=approvedd", nil, 400, "Unknown state"},
		{"bad repository filter", "GET", "/ui/images?repository=nginx", nil, 400, "does not name its upstream"},
		{"bad upstream filter", "GET", "/ui/images?upstream=a/b", nil, 400, "invalid upstream"},
		{"bad sort", "GET", "/ui/images?sort=size", nil, 400, "Unknown sort"},
		{"bad page", "GET", "/ui/images?page=0", nil, 400, "is not a number"},
		{"long search", "GET", "/ui/images?q=" + strings.Repeat("x", 300), nil, 400, "keep it under"},
		{"bad audit action", "GET", "/ui/audit?action=edit", nil, 400, "Unknown action"},
		{"bad audit page", "GET", "/ui/audit?before=x", nil, 400, "not a record number"},
		{"POST the overview", "POST", "/ui/", url.Values{}, 405, "use GET"},
	} {
		if tc.form != nil {
			tc.form.Set("csrf", csrf)
			tc.form.Set("confirm", "yes")
		}
		wantStatus(t, tc.name, b.do(tc.method, tc.path, tc.form), tc.status, tc.says)
	}
	// A body beyond the bound is refused, not read.
	huge := url.Values{"csrf": {csrf}, "reason": {strings.Repeat("x", 70<<10)}}
	wantStatus(t, "huge form", b.post(page+"/block", huge), http.StatusBadRequest, "could not be read")

	if after := len(f.h.Audit()); after != before {
		t.Fatalf("refused requests wrote %d audit records", after-before)
	}
	if img := f.image(appRepo, f.quarantined); img.State != metadata.StateQuarantined {
		t.Fatalf("refused requests left the image %s", img.State)
	}
}

// TestPages: every page renders what it promises, reads without a
// token, and carries the headers that keep it to itself.
func TestPages(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	b.signIn(admintest.AliceToken)

	a := b.get("/ui/")
	wantStatus(t, "overview", a, http.StatusOK, "Images by state", "Newly quarantined, last 24 h",
		"hcl/vendor/app:1.1", // the refused pull
		`<td class="repo">hcl</td><td class="health-healthy">healthy</td>`,
		"(at the last eviction sweep)",                                // the cache's size, measured
		"25.0 % <span class=\"muted small\">of 4 lookups since start", // one hit: the second pull of 1.0
		`href="/ui/images?state=quarantined"`)
	if strings.Contains(a.body, "<dd>0 B <span") {
		t.Fatal("the overview shows an empty cache; the sweep measured a layer")
	}
	csp := a.header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") ||
		a.header.Get("X-Frame-Options") != "DENY" || a.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("headers = %v", a.header)
	}
	for _, bad := range []string{"http://", "https://", "<script>", "style="} {
		if strings.Contains(a.body, bad) {
			t.Fatalf("the overview contains %q: everything must come from airlock, with no inline code", bad)
		}
	}

	wantStatus(t, "images by search", b.get("/ui/images?q=vendor+key"), http.StatusOK, vulnRepo, "(&#43;1 more)")
	if a := b.get("/ui/images?q=vendor+key"); strings.Contains(a.body, `>hcl/vendor/app<`) {
		t.Fatal("the search matched an image without that text")
	}
	wantStatus(t, "images by state", b.get("/ui/images?state=approved&sort=repository"), http.StatusOK, "1 image.")
	wantStatus(t, "images by upstream", b.get("/ui/images?upstream=hub"), http.StatusOK, "1 image.", vulnRepo)

	a = b.get(imagePath(vulnRepo, f.scanned))
	wantStatus(t, "findings", a, http.StatusOK,
		`href="https://security-tracker.debian.org/tracker/CVE-2026-12345"`, `href="https://github.com/advisories/GHSA-abcd-efgh-ijkl"`,
		"openssl", "3.0.11-1", "3.0.15-1", "critical", "no fix", "vendor-release-2026",
		`<h2 id="vulns-h">Vulnerabilities</h2>`, `<span class="badge scan-done">done</span>`, "Debian GNU/Linux 12 (bookworm)",
		"97 <span class=\"muted small\">in 3 layers, 30.0 MiB", "(waited 10s)", "took 30s",
		`3 findings: <span class="sev sev-critical">1 critical</span> <span class="sev sev-high">1 high</span> <span class="sev sev-low">1 low</span>; 1 refused by policy; 1 waived.`,
		"<strong>refuses the image</strong>", "waived by no-critical: inflate is never called on untrusted input",
		"source: HIGH", `<span class="muted">not refused</span>`,
		"vulnerability CVE-2026-12345 (critical) in openssl", `href="#vulns-h"`,
		"https://github.com/vendor/app/.github/workflows/release.yml@refs/tags/v2.4", "signed-by-vendor",
		"Signature checks", "not verified", "none verifies with key vendor-release-2026",
		f.h.Clock.Now().Add(72*time.Hour).Format("2006-01-02 15:04:05 UTC"))

	a = b.get(imagePath(appRepo, f.approved))
	wantStatus(t, "approved image", a, http.StatusOK, `id="state">approved<`, "Layers", "compressed", ">1.0<")
	if strings.Contains(a.body, ">Release</button>") {
		t.Fatal("an approved image offers a release")
	}

	static := b.get("/ui/static/console.css")
	if static.status != http.StatusOK || !strings.HasPrefix(static.header.Get("Content-Type"), "text/css") {
		t.Fatalf("stylesheet = %d %s", static.status, static.header.Get("Content-Type"))
	}
}

// TestStatsFrom: the overview's figures come from the proxy's own series.
func TestStatsFrom(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := proxy.NewMetrics(reg)
	stats := console.StatsFrom(reg)
	s, err := stats(t.Context())
	if err != nil || len(s.Upstreams) != 0 || s.Cache.SizeKnown || s.Cache.Lookups != 0 {
		t.Fatalf("before any traffic: %+v, %v", s, err)
	}
	for range 19 {
		m.ObserveUpstream(upstream.Event{Upstream: "dockerhub", Op: "blob", Status: 200,
			Header: http.Header{"Ratelimit-Remaining": {"97;w=21600"}}})
	}
	m.ObserveUpstream(upstream.Event{Upstream: "dockerhub", Op: "manifest", Status: 429})
	m.ObserveUpstream(upstream.Event{Upstream: "quay", Op: "manifest", Err: io.ErrUnexpectedEOF})
	if s, err = stats(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name            string
		requests, fails float64
		health          string
		rate            bool
	}{{"dockerhub", 20, 1, "degraded", true}, {"quay", 1, 1, "failing", false}}
	if len(s.Upstreams) != len(want) {
		t.Fatalf("upstreams = %+v", s.Upstreams)
	}
	for i, w := range want {
		u := s.Upstreams[i]
		if u.Name != w.name || u.Requests != w.requests || u.Errors != w.fails || u.Health() != w.health ||
			u.RateLimitKnown != w.rate || (w.rate && u.RateLimitRemaining != 97) {
			t.Errorf("upstream %d = %+v (%s); want %+v", i, u, u.Health(), w)
		}
	}
}

// TestSessionEnds: signing out, the idle timeout and removing the token
// from admin.tokenFile each end a session.
func TestSessionEnds(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)

	b := f.browser()
	csrf := b.signIn(admintest.AliceToken)
	wantStatus(t, "sign-out without CSRF", b.post("/ui/logout", url.Values{}), http.StatusForbidden, "CSRF")
	if a := b.post("/ui/logout", url.Values{"csrf": {csrf}}); a.status != http.StatusSeeOther {
		t.Fatalf("sign-out = %d", a.status)
	}
	if a := b.get("/ui/"); a.status != http.StatusSeeOther {
		t.Fatalf("after sign-out /ui/ = %d; want a redirect to sign in", a.status)
	}
	wantStatus(t, "a change after sign-out", b.post(imagePath(appRepo, f.quarantined)+"/rescan",
		url.Values{"csrf": {csrf}, "confirm": {"yes"}}), http.StatusForbidden, "not signed in")

	idle := f.browser()
	idle.signIn(admintest.AliceToken)
	f.h.Clock.Advance(61 * time.Minute)
	if a := idle.get("/ui/"); a.status != http.StatusSeeOther {
		t.Fatalf("after an idle hour /ui/ = %d; want a redirect to sign in", a.status)
	}

	revoked := f.browser()
	revoked.signIn(admintest.AliceToken)
	if err := os.WriteFile(f.h.TokenFile, []byte(admintest.UnnamedToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if a := revoked.get("/ui/"); a.status != http.StatusSeeOther {
		t.Fatalf("after the token's removal /ui/ = %d; want a redirect to sign in", a.status)
	}
}

func (f *fixture) image(repo string, d interface{ String() string }) metadata.Image {
	f.t.Helper()
	img, err := f.h.Meta.Image(f.t.Context(), repo, digestOf(d))
	if err != nil {
		f.t.Fatal(err)
	}
	return img
}

func (f *fixture) lastAudit() metadata.AuditRecord {
	f.t.Helper()
	recs := f.h.Audit()
	return recs[len(recs)-1]
}

// TestSignInRefusalsNoThrottleCounts: sign-ins refused before any token
// was tried (the form posted without its CSRF cookie) or because no token
// can be accepted (admin.tokenFile missing) are refused every time, but
// logged as a warning once a minute, the next one saying how many were held
// back: anyone can send them, and no throttle counts them.
func TestSignInRefusalsNoThrottleCounts(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	var logs admintest.LogBuffer
	c, err := console.New(console.Options{Store: f.h.Meta, Decider: f.h.Gate, TokenFile: filepath.Join(t.TempDir(), "no-such-file"),
		Logger: slog.New(slog.NewTextHandler(&logs, nil)), Now: f.h.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, c)
	g := &fixture{t: t, h: f.h, srv: httptest.NewServer(mux)}
	t.Cleanup(g.srv.Close)

	const rounds = 20
	for range rounds {
		// No cookie, so no CSRF value can match.
		a := g.browser().post("/ui/login", url.Values{"csrf": {"forged"}, "token": {admintest.AliceToken}})
		wantStatus(t, "sign-in without the form's cookie", a, http.StatusForbidden, "did not come from this page")
		b := g.browser()
		a = b.post("/ui/login", url.Values{"csrf": {csrfOf(t, b.get("/ui/login").body)}, "token": {admintest.AliceToken}})
		if a.status != http.StatusServiceUnavailable {
			t.Fatalf("sign-in with admin.tokenFile missing = %d, want 503:\n%s", a.status, a.body)
		}
	}
	csrfWarn := `level=WARN msg="console sign-in refused: CSRF token missing or wrong"`
	fileWarn := `level=WARN msg="console sign-in refused" remote=`
	if n, m := strings.Count(logs.String(), csrfWarn), strings.Count(logs.String(), fileWarn); n != 1 || m != 1 {
		t.Fatalf("%d refusals of each kind logged %d and %d warnings, want 1 each:\n%s", rounds, n, m, logs.String())
	}
	f.h.Clock.Advance(time.Minute)
	g.browser().post("/ui/login", url.Values{"csrf": {"forged"}, "token": {admintest.AliceToken}})
	if n := strings.Count(logs.String(), csrfWarn); n != 2 || !strings.Contains(logs.String(), fmt.Sprintf("held_back=%d", rounds-1)) {
		t.Fatalf("a minute later: %d warnings, want 2, the second saying %d were held back:\n%s", n, rounds-1, logs.String())
	}
}
