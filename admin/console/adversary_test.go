package console_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/admin/console"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// The adversary's tests: what an attacker on the admin network, a
// malicious upstream or a careless admin can make of the console.

// payload is markup in every context a page could put it: element text,
// a quoted attribute, an unquoted attribute, a URL.
const payload = `"'><script>alert(1)</script><img src=x onerror=alert(2)>javascript:alert(3)`

// rawMarkup are what payload leaves in a page that failed to escape it.
var rawMarkup = []string{"<script>alert", "<img src=x", "onerror=alert(2)>", `href="javascript:`}

func wantEscaped(t *testing.T, what string, a answer) {
	t.Helper()
	for _, raw := range rawMarkup {
		if strings.Contains(a.body, raw) {
			i := strings.Index(a.body, raw)
			t.Fatalf("%s: the page carries %q unescaped: …%s…", what, raw, a.body[max(0, i-200):min(len(a.body), i+200)])
		}
	}
}

// TestAdversaryInjection: everything an upstream or a client controls
// (tags, platforms, media types, reasons, signature and vulnerability
// fields) and everything an admin types (reasons) reaches the pages as
// text, never as markup, a script or a link.
func TestAdversaryInjection(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	csrf := b.signIn(admintest.AliceToken)

	d := digest.FromString("hostile index")
	pd := digest.FromString("hostile platform")
	when := f.h.Clock.Now()
	_, err := f.h.Meta.UpdateImage(context.Background(), vulnRepo, d, when, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		img.MediaType = payload
		img.Tags = []string{payload, "javascript:alert(4)"}
		img.Platforms = []metadata.Platform{{Digest: pd, MediaType: payload, OS: payload, Architecture: payload, Variant: payload}}
		img.Reasons = []metadata.Reason{
			{Type: metadata.ReasonPolicy, Message: payload, Policy: payload, Tag: payload, Mode: payload, KeyID: payload, Identity: payload, Actor: payload},
			{Type: metadata.ReasonSignature, Message: payload, Policy: payload, KeyID: payload, Identity: "javascript:alert(5)"},
			{Type: metadata.ReasonVulnerability, Message: payload, Policy: payload, ID: "javascript:alert(6)", Package: payload,
				Installed: payload, Fixed: payload, Severity: payload},
			{Type: metadata.ReasonVulnerability, Message: payload, ID: payload, Severity: `x" style="color:red`},
		}
		img.Verdict = metadata.Verdict{State: metadata.StateQuarantined, Policies: []string{payload},
			Signatures: []metadata.SignatureEvidence{{Policy: payload, Kind: payload, KeyID: payload, Identity: payload, Message: payload}},
			Waived: []metadata.Waived{{ID: "CVE-2026-2", Package: payload, Severity: payload, Policy: payload, Reason: payload, Source: payload,
				Until: when.Add(time.Hour)}}}
		// Findings come from vulnerability data: the feeds write their
		// ids, package names, versions, severities and links.
		img.Scan = &metadata.Scan{State: metadata.ScanDone, Error: payload, Note: payload, Distribution: payload, Data: payload,
			Findings: []metadata.Finding{
				{ID: payload, Package: payload, Installed: payload, Fixed: payload, Severity: payload, SourceSeverity: payload, Link: "javascript:alert(7)"},
				{ID: "CVE-2026-1", Package: "a", Severity: `high" onmouseover="alert(8)`, Link: `https://x.example/"onmouseover="alert(8)`},
				{ID: "CVE-2026-2", Package: payload, Severity: "high", Link: "data:text/html,<script>alert(9)</script>"},
				{ID: "CVE-2026-3", Package: "b", Severity: "low", Link: "//evil.example/advisory"},
				{ID: "CVE-2026-4", Package: "c", Severity: "low", Link: "https://user:pw@evil.example/"},
			}}
		return metadata.Change{Actor: "policy", Action: "decide", Reason: payload}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	page := imagePath(vulnRepo, d)
	a := b.get(page)
	wantStatus(t, "hostile image", a, http.StatusOK, "&lt;script&gt;alert(1)&lt;/script&gt;",
		`href="https://x.example/%22onmouseover=%22alert%288%29"`, // a link is a link, its quotes escaped
		`href="https://nvd.nist.gov/vuln/detail/CVE-2026-3"`,      // a scheme-relative link is not followed
		`href="https://nvd.nist.gov/vuln/detail/CVE-2026-4"`)      // nor one with credentials
	wantEscaped(t, "hostile image", a)
	for _, bad := range []string{`style="color:red`, "javascript:alert(6)\"", "javascript:alert(7)\"", `href="data:`,
		`" onmouseover`, `"onmouseover`, `href="//evil`, "user:pw@"} {
		if strings.Contains(a.body, bad) {
			t.Fatalf("the page carries %q: a severity, an advisory id or a link broke out of its place", bad)
		}
	}
	for _, want := range []string{`class="sev sev-unknown"`} {
		if !strings.Contains(a.body, want) {
			t.Fatalf("the page lacks %q: an unknown severity is not shown as such", want)
		}
	}

	// An admin's reason is markup too, in the confirmation, the flash,
	// the override card, the audit log and the images table.
	form := url.Values{"csrf": {csrf}, "reason": {payload}}
	a = b.post(page+"/block", form)
	wantStatus(t, "confirm a hostile reason", a, http.StatusOK, "Confirm block")
	wantEscaped(t, "confirm a hostile reason", a)
	form.Set("confirm", "yes")
	if a := b.post(page+"/block", form); a.status != http.StatusSeeOther {
		t.Fatalf("block = %d %.500s", a.status, a.body)
	}
	for _, p := range []string{page, "/ui/images", "/ui/images?q=" + url.QueryEscape(payload[:40]), "/ui/audit",
		"/ui/audit?q=" + url.QueryEscape(payload[:40]) + "&actor=" + url.QueryEscape(payload[:40]), "/ui/"} {
		a := b.get(p)
		if a.status != http.StatusOK {
			t.Fatalf("GET %s = %d %.500s", p, a.status, a.body)
		}
		wantEscaped(t, p, a)
	}

	// What a client sends comes back in error pages and refused forms.
	for _, p := range []string{
		"/ui/" + url.PathEscape(payload),
		"/ui/images?state=" + url.QueryEscape(payload),
		"/ui/images?sort=" + url.QueryEscape(payload),
		"/ui/images?page=" + url.QueryEscape(payload),
		"/ui/audit?action=" + url.QueryEscape(payload),
		"/ui/audit?before=" + url.QueryEscape(payload),
		"/ui/images/" + url.PathEscape(payload) + "@" + d.String(),
		"/ui/login?next=" + url.QueryEscape("/ui/"+payload),
	} {
		wantEscaped(t, p, b.get(p))
	}
	a = b.post(page+"/unblock", url.Values{"csrf": {csrf}, "reason": {payload}, "expires": {payload}})
	wantStatus(t, "refused unblock", a, http.StatusBadRequest)
	wantEscaped(t, "refused unblock", a)
	a = b.post(imagePath(appRepo, f.quarantined)+"/release", url.Values{"csrf": {csrf}, "reason": {payload}, "expires": {payload}})
	wantStatus(t, "refused release", a, http.StatusBadRequest, "is not a date")
	wantEscaped(t, "refused release", a)
}

// TestAdversaryCSRF: a form carrying another session's token, a cross-site
// POST carrying this session's, and a GET to an action change nothing.
func TestAdversaryCSRF(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	victim, attacker := f.browser(), f.browser()
	victim.signIn(admintest.AliceToken)
	attackerCSRF := attacker.signIn(admintest.UnnamedToken)
	page := imagePath(appRepo, f.quarantined)
	before := len(f.h.Audit())

	form := url.Values{"csrf": {attackerCSRF}, "reason": {"x"}, "confirm": {"yes"}}
	wantStatus(t, "another session's CSRF token", victim.post(page+"/release", form), http.StatusForbidden, "CSRF")
	wantStatus(t, "another session's CSRF token on sign-out", victim.post("/ui/logout", url.Values{"csrf": {attackerCSRF}}),
		http.StatusForbidden, "CSRF")

	victimCSRF := csrfOf(t, victim.get("/ui/images").body)
	form.Set("csrf", victimCSRF)
	for _, h := range [][]string{
		{"Sec-Fetch-Site", "cross-site"},
		{"Origin", "http://evil.example"},
	} {
		a := victim.do(http.MethodPost, page+"/release", form, h...)
		if a.status != http.StatusForbidden {
			t.Fatalf("cross-origin POST (%s: %s) = %d; want 403", h[0], h[1], a.status)
		}
	}
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete} {
		if a := victim.do(m, page+"/release?csrf="+victimCSRF+"&reason=x&confirm=yes", nil); a.status != http.StatusMethodNotAllowed {
			t.Fatalf("%s to an action = %d; want 405", m, a.status)
		}
	}
	// Login CSRF: another site signing the browser in with its token.
	fresh := f.browser()
	loginCSRF := csrfOf(t, fresh.get("/ui/login").body)
	a := fresh.do(http.MethodPost, "/ui/login", url.Values{"csrf": {loginCSRF}, "token": {admintest.UnnamedToken}},
		"Sec-Fetch-Site", "cross-site")
	if a.status != http.StatusForbidden || strings.Contains(strings.Join(a.header.Values("Set-Cookie"), ";"), "airlock_console=") {
		t.Fatalf("cross-site sign-in = %d %v; want 403 and no session", a.status, a.header.Values("Set-Cookie"))
	}
	if a := victim.get("/ui/logout"); a.status != http.StatusMethodNotAllowed {
		t.Fatalf("GET /ui/logout = %d; want 405", a.status)
	}
	if after := len(f.h.Audit()); after != before {
		t.Fatalf("forged requests wrote %d audit records", after-before)
	}
	if img := f.image(appRepo, f.quarantined); img.State != metadata.StateQuarantined {
		t.Fatalf("forged requests left the image %s", img.State)
	}
	if a := victim.get("/ui/"); a.status != http.StatusOK {
		t.Fatalf("the victim's session did not survive the forged sign-out: %d", a.status)
	}
}

// TestAdversarySignInBodyBounded: the sign-in form, which anyone may post,
// is read within the same bound as every other form. It used to be read
// in full (up to net/http's 10 MB, or a multipart body spooled to disk)
// before the bound applied.
func TestAdversarySignInBodyBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	csrf := csrfOf(t, b.get("/ui/login").body)
	form := url.Values{"csrf": {csrf}, "token": {admintest.AliceToken}, "pad": {strings.Repeat("x", 1<<20)}}
	a := b.post("/ui/login", form)
	wantStatus(t, "a 1 MiB sign-in form", a, http.StatusBadRequest, "could not be read")
	for _, c := range a.header.Values("Set-Cookie") {
		if strings.HasPrefix(c, "airlock_console=") {
			t.Fatalf("a 1 MiB sign-in form signed in: %s", c)
		}
	}
}

// TestAdversarySignInEndsPreviousSession: signing in again from a browser
// ends the session its cookie held, so the id it replaces (which may have
// leaked, or belong to the previous user of a shared browser) opens
// nothing.
func TestAdversarySignInEndsPreviousSession(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	b.signIn(admintest.AliceToken)
	u := mustURL(t, f.srv.URL+"/ui/")
	var old string
	for _, c := range b.jar.Cookies(u) {
		if c.Name == "airlock_console" {
			old = c.Value
		}
	}
	if old == "" {
		t.Fatal("no session cookie after sign-in")
	}
	b.signIn(admintest.UnnamedToken)

	replay := f.browser()
	replay.jar.SetCookies(u, []*http.Cookie{{Name: "airlock_console", Value: old}})
	if a := replay.get("/ui/"); a.status != http.StatusSeeOther {
		t.Fatalf("the session a second sign-in replaced still opens the console: %d", a.status)
	}
	wantStatus(t, "the new session", b.get("/ui/"), http.StatusOK, "admin:token-")
}

// TestAdversarySignInThrottleConcurrent: guesses sent all at once are
// throttled like guesses sent one after the other: no more than five are
// checked within the window.
func TestAdversarySignInThrottleConcurrent(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	csrf := csrfOf(t, b.get("/ui/login").body)
	const guesses = 40
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		checked int
		start   = make(chan struct{})
	)
	for range guesses {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/ui/login",
				strings.NewReader(url.Values{"csrf": {csrf}, "token": {"guess"}}.Encode()))
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.AddCookie(&http.Cookie{Name: "airlock_console_login", Value: csrf})
			<-start
			resp, err := (&http.Client{Transport: f.srv.Client().Transport}).Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			switch resp.StatusCode {
			case http.StatusUnauthorized:
				checked++
			case http.StatusTooManyRequests:
			default:
				t.Errorf("a guess got %d", resp.StatusCode)
			}
		})
	}
	close(start)
	wg.Wait()
	if checked > 5 {
		t.Fatalf("%d of %d concurrent guesses were checked; at most 5 may be within a minute", checked, guesses)
	}
	f.h.Clock.Advance(61 * time.Second)
	csrf = csrfOf(t, b.get("/ui/login").body)
	if a := b.post("/ui/login", url.Values{"csrf": {csrf}, "token": {admintest.AliceToken}}); a.status != http.StatusSeeOther {
		t.Fatalf("sign-in a minute later = %d", a.status)
	}
}

// countingStore counts the whole-table reads in flight.
type countingStore struct {
	admin.Store
	inflight, peak atomic.Int32
}

func (s *countingStore) Images(ctx context.Context, q metadata.ImageQuery) (metadata.ImagePage, error) {
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	time.Sleep(50 * time.Millisecond) // a store with many images
	return s.Store.Images(ctx, q)
}

// TestAdversaryScansBounded: the pages that read every image at once
// (up to 100,000 of them, decoded) are built a few at a time, however many
// tabs ask for them.
func TestAdversaryScansBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	store := &countingStore{Store: f.h.Meta}
	c, err := console.New(console.Options{Store: store, Decider: f.h.Gate, TokenFile: f.h.TokenFile, Now: f.h.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, c)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.srv = srv
	b := f.browser()
	b.signIn(admintest.AliceToken)

	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			path := "/ui/images"
			if i%2 == 0 {
				path = "/ui/"
			}
			if a := b.get(path); a.status != http.StatusOK {
				t.Errorf("GET %s = %d", path, a.status)
			}
		})
	}
	wg.Wait()
	if p := store.peak.Load(); p > 2 {
		t.Fatalf("%d whole-table reads ran at once; want at most 2", p)
	}
}

// TestAdversarySecureBehindTLSProxy: behind a reverse proxy that ends TLS
// (and says so in X-Forwarded-Proto), the session cookie is still Secure,
// so the browser never sends it over plain HTTP.
func TestAdversarySecureBehindTLSProxy(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	login := b.do(http.MethodGet, "/ui/login", nil, "X-Forwarded-Proto", "https")
	a := b.do(http.MethodPost, "/ui/login", url.Values{"csrf": {csrfOf(t, login.body)}, "token": {admintest.AliceToken}},
		"X-Forwarded-Proto", "https")
	if a.status != http.StatusSeeOther {
		t.Fatalf("sign-in behind a TLS proxy = %d %.300s", a.status, a.body)
	}
	var session *http.Cookie
	for _, c := range (&http.Response{Header: a.header}).Cookies() {
		if c.Name == "airlock_console" {
			session = c
		}
	}
	if session == nil || !session.Secure {
		t.Fatalf("session cookie behind a TLS proxy = %+v; want Secure", session)
	}
}

// TestAdversaryHeld: what the adversary tried that the console already
// held: image paths that climb out or smuggle another name, a session id
// chosen by the attacker, a session kept alive past its lifetime, a token
// in the log, and the headers that keep pages to the browser that asked.
func TestAdversaryHeld(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	var logs strings.Builder
	var logMu sync.Mutex
	c, err := console.New(console.Options{Store: f.h.Meta, Decider: f.h.Gate, TokenFile: f.h.TokenFile, Now: f.h.Clock.Now,
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, c)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)

	// An id the attacker planted is replaced at sign-in.
	b := f.browser()
	u := mustURL(t, f.srv.URL+"/ui/")
	b.jar.SetCookies(u, []*http.Cookie{{Name: "airlock_console", Value: "planted-by-the-attacker", Path: "/ui/"}})
	b.get("/ui/login")
	csrfLogin := csrfOf(t, b.get("/ui/login").body)
	b.post("/ui/login", url.Values{"csrf": {csrfLogin}, "token": {"not-" + admintest.AliceToken}})
	csrf := b.signIn(admintest.AliceToken)
	for _, ck := range b.jar.Cookies(u) {
		if ck.Name == "airlock_console" && ck.Value == "planted-by-the-attacker" {
			t.Fatal("the planted session id survived sign-in")
		}
	}

	d := f.quarantined.String()
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/ui/images/hcl/vendor/../../../audit@" + d, http.StatusTemporaryRedirect}, // the mux cleans it first
		{"/ui/images/hcl%2Fvendor%2F..%2F..%2Fx@" + d, http.StatusBadRequest},
		{"/ui/images/hcl/vendor/%2e%2e/app@" + d, http.StatusBadRequest},
		{"/ui/images/HCL/vendor/app@" + d, http.StatusBadRequest},
		{"/ui/images/hcl/vendor/app@" + strings.ToUpper(d), http.StatusBadRequest},
		{"/ui/images/hcl/vendor/app@sha256:" + strings.Repeat("0", 64) + "%00", http.StatusBadRequest},
		{"/ui/images/hcl//vendor/app@" + d, http.StatusTemporaryRedirect},
		{"/ui/images/hcl/vendor/app@" + d + "/release/extra", http.StatusNotFound},
		{"/ui/images/" + strings.Repeat("a/", 400) + "b@" + d, http.StatusBadRequest},
		{"/ui/images?page=99999999999999999999", http.StatusBadRequest},
		{"/ui/audit?before=18446744073709551615", http.StatusOK},
		{"/ui/images?q=" + url.QueryEscape(strings.Repeat("é", 150)), http.StatusBadRequest},
	} {
		if a := b.get(tc.path); a.status != tc.status {
			t.Errorf("GET %s = %d; want %d\n%.300s", tc.path, a.status, tc.status, a.body)
		}
	}

	a := b.get(imagePath(appRepo, f.quarantined))
	for k, want := range map[string]string{
		"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
		"Referrer-Policy": "no-referrer",
		"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
			"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
	} {
		if got := a.header.Get(k); got != want {
			t.Errorf("%s: %q; want %q", k, got, want)
		}
	}
	for _, p := range []string{"/ui/nope", "/ui/login"} {
		if a := b.get(p); a.header.Get("Cache-Control") != "no-store" || a.header.Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s headers = %v", p, a.header)
		}
	}

	// A change is recorded under the signed-in token's name.
	form := url.Values{"csrf": {csrf}, "reason": {"held test"}, "confirm": {"yes"}}
	if a := b.post(imagePath(appRepo, f.quarantined)+"/block", form); a.status != http.StatusSeeOther {
		t.Fatalf("block = %d", a.status)
	}
	if rec := f.lastAudit(); rec.Actor != "admin:alice" || rec.Action != "block" || rec.Reason != "held test" {
		t.Fatalf("audit record = %+v", rec)
	}

	// Activity does not stretch a session past its lifetime.
	for range 8 {
		f.h.Clock.Advance(59 * time.Minute)
		if a := b.get("/ui/audit"); a.status != http.StatusOK {
			t.Fatalf("a used session ended early: %d", a.status)
		}
	}
	f.h.Clock.Advance(9 * time.Minute)
	if a := b.get("/ui/"); a.status != http.StatusSeeOther {
		t.Fatalf("after 8 hours /ui/ = %d; want a redirect to sign in", a.status)
	}

	logMu.Lock()
	defer logMu.Unlock()
	if strings.Contains(logs.String(), admintest.AliceToken) {
		t.Fatalf("the log holds a token:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "console sign-in refused") || !strings.Contains(logs.String(), "actor=admin:alice") {
		t.Fatalf("the log lacks the sign-ins:\n%s", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestAdversaryBidi: text an upstream controls cannot reorder what a page
// shows with Unicode's bidirectional controls (an identity that reads as
// another, a tag that hides its end): they are shown as visible marks.
func TestAdversaryBidi(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	b.signIn(admintest.AliceToken)
	d := digest.FromString("bidi image")
	spoof := "https://github.com/vendor/app\u202e/lmy.esaeler/swolfkrow\u2066\u2069"
	_, err := f.h.Meta.UpdateImage(context.Background(), vulnRepo, d, f.h.Clock.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		img.Reasons = []metadata.Reason{{Type: metadata.ReasonSignature, Message: "identity " + spoof, Identity: spoof, Policy: "signed"}}
		return metadata.Change{Actor: "policy", Action: "decide", Reason: "identity " + spoof}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{imagePath(vulnRepo, d), "/ui/images?q=identity", "/ui/audit"} {
		a := b.get(p)
		wantStatus(t, p, a, http.StatusOK, "[U+202E]")
		if strings.ContainsAny(a.body, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c") {
			t.Fatalf("GET %s: the page carries a bidirectional control", p)
		}
	}
}

// TestAdversarySignOutServerSide: a session id copied before sign-out
// (from a proxy's log, a stolen cookie) opens nothing afterwards: the
// session ends in airlock, not only in the browser.
func TestAdversarySignOutServerSide(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	csrf := b.signIn(admintest.AliceToken)
	u := mustURL(t, f.srv.URL+"/ui/")
	var stolen string
	for _, c := range b.jar.Cookies(u) {
		if c.Name == "airlock_console" {
			stolen = c.Value
		}
	}
	if a := b.post("/ui/logout", url.Values{"csrf": {csrf}}); a.status != http.StatusSeeOther {
		t.Fatalf("sign-out = %d", a.status)
	}
	thief := f.browser()
	thief.jar.SetCookies(u, []*http.Cookie{{Name: "airlock_console", Value: stolen, Path: "/ui/"}})
	if a := thief.get("/ui/"); a.status != http.StatusSeeOther {
		t.Fatalf("a session id copied before sign-out still opens the console: %d", a.status)
	}
	wantStatus(t, "a change with a copied session id", thief.post(imagePath(appRepo, f.quarantined)+"/release",
		url.Values{"csrf": {csrf}, "reason": {"x"}, "confirm": {"yes"}}), http.StatusForbidden, "not signed in")
}

// TestAdversaryWideIndex: an upstream's index listing thousands of
// platforms does not make the image page megabytes long: it lists the
// first hundred and says how many more there are.
func TestAdversaryWideIndex(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	b.signIn(admintest.AliceToken)
	d := digest.FromString("wide index")
	_, err := f.h.Meta.UpdateImage(context.Background(), vulnRepo, d, f.h.Clock.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		for i := range 2000 {
			img.Platforms = append(img.Platforms, metadata.Platform{Digest: digest.FromString(strconv.Itoa(i)),
				OS: "linux", Architecture: "arch" + strconv.Itoa(i)})
		}
		return metadata.Change{Actor: "policy", Action: "decide", Reason: "wide"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a := b.get(imagePath(vulnRepo, d))
	wantStatus(t, "a 2000-platform index", a, http.StatusOK, "linux/arch99<", "And 1900 more the index lists")
	if strings.Contains(a.body, "linux/arch100<") || len(a.body) > 200<<10 {
		t.Fatalf("the page lists more than 100 platforms (%d bytes)", len(a.body))
	}
}

// TestAdversaryManyTags: an image grows a tag for each tag pulled, and
// whoever can pull can pull thousands; the images table shows five per
// row and the image page a hundred, each saying how many more.
func TestAdversaryManyTags(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	b.signIn(admintest.AliceToken)
	d := digest.FromString("many tags")
	_, err := f.h.Meta.UpdateImage(context.Background(), vulnRepo, d, f.h.Clock.Now(), func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		for i := range 1000 {
			img.Tags = append(img.Tags, "t"+strconv.Itoa(i))
		}
		return metadata.Change{Actor: "policy", Action: "decide", Reason: "many"}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	a := b.get("/ui/images?q=t999")
	wantStatus(t, "the images table", a, http.StatusOK, ">t4<", "+995")
	if strings.Contains(a.body, ">t5<") {
		t.Fatal("the images table lists more than 5 tags in a row")
	}
	a = b.get(imagePath(vulnRepo, d))
	wantStatus(t, "the image page", a, http.StatusOK, ">t99<", "and 900 more")
	if strings.Contains(a.body, ">t100<") {
		t.Fatal("the image page lists more than 100 tags")
	}
}

// TestAdversaryAuditBeyondEnd: an audit page asked for records before a
// number past the newest (an edited or stale URL) shows the newest, not
// "no record matches".
func TestAdversaryAuditBeyondEnd(t *testing.T) {
	t.Parallel()
	f := newFixture(t, false)
	b := f.browser()
	b.signIn(admintest.AliceToken)
	wantStatus(t, "audit before 1e12", b.get("/ui/audit?before=1000000000000"), http.StatusOK, `<td class="num">1</td>`)
}
