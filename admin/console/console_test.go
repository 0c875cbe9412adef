package console_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/admin/console"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/evict"
	"github.com/airlock-registry/airlock/storage/metadata"
)

const (
	appRepo = "hcl/vendor/app"
	// vulnRepo holds an image whose reasons the test writes straight into
	// the store, as the scanning and signature checks will: the console
	// must render their detail fields before those checks exist.
	vulnRepo = "hub/team/scanned"
)

// fixture is a whole airlock (admintest) with the console mounted beside
// the admin API, an approved image (1.0, pinned) and a quarantined one
// (1.1, not pinned).
type fixture struct {
	t           *testing.T
	h           *admintest.Harness
	srv         *httptest.Server
	approved    digest.Digest
	quarantined digest.Digest
	scanned     digest.Digest
}

func newFixture(t *testing.T, tlsServer bool) *fixture {
	t.Helper()
	up := upstreamtest.New(t, upstreamtest.Options{})
	pinned := up.PushImage(t, "vendor/app", "1.0", 512, 2)
	unpinned := up.PushImage(t, "vendor/app", "1.1", 512, 2)
	h := admintest.New(t, up, appRepo+":1.0 "+pinned.Digest.String()+"\n")
	h.MustPull(appRepo, "1.0", http.StatusOK)
	h.MustPull(appRepo, "1.1", http.StatusForbidden)
	f := &fixture{t: t, h: h, approved: digest.Digest(pinned.Digest.String()), quarantined: digest.Digest(unpinned.Digest.String())}
	f.scanned = f.seedScanned()

	// A second pull of the approved tag is a cache hit, and one of its
	// layers lands in the cache; a sweep measures it, as serve's evictor
	// does.
	h.MustPull(appRepo, "1.0", http.StatusOK)
	f.getBlob(appRepo, pinned.Layers[0].String())
	blobs, err := storage.NewFilesystem(filepath.Join(h.Dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	ev := evict.New(evict.Options{Blobs: blobs, Registerer: h.Metrics})
	// The layer is committed just after it is served.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		res, err := ev.Sweep(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if res.Blobs > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the layer pulled was not committed to the cache within 5s")
		}
	}
	c, err := console.New(console.Options{Store: h.Meta, Decider: h.Gate, TokenFile: h.TokenFile, Cache: h.Proxy,
		Manifests: h.Meta, Denials: h.Gate.RecentDenials, Stats: console.StatsFrom(h.Metrics), Now: h.Clock.Now,
		Throttle: h.Throttle})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Prefix, c)
	if tlsServer {
		f.srv = httptest.NewTLSServer(mux)
	} else {
		f.srv = httptest.NewServer(mux)
	}
	t.Cleanup(f.srv.Close)
	return f
}

// getBlob reads a blob through the registry port, as a pull does.
func (f *fixture) getBlob(repo, d string) {
	f.t.Helper()
	resp, err := http.Get(f.h.Registry.URL + "/v2/" + repo + "/blobs/" + d)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		f.t.Fatalf("GET blob %s@%s = %d, %v", repo, d, resp.StatusCode, err)
	}
}

// seedScanned writes an image with signature and vulnerability reasons
// and the scan they come from: a critical finding a policy refuses, a high
// one waived for 72 hours, and a low one below the policy's severity.
func (f *fixture) seedScanned() digest.Digest {
	d := digest.FromString("scanned image")
	now := f.h.Clock.Now()
	waiver := now.Add(72 * time.Hour)
	_, err := f.h.Meta.UpdateImage(context.Background(), vulnRepo, d, now, func(img *metadata.Image) (metadata.Change, error) {
		img.State = metadata.StateQuarantined
		img.MediaType = "application/vnd.oci.image.manifest.v1+json"
		img.Tags = []string{"2.4"}
		img.Scan = &metadata.Scan{State: metadata.ScanDone, Queued: now.Add(-time.Minute), Started: now.Add(-50 * time.Second),
			Finished: now.Add(-20 * time.Second), Attempts: 1, Distribution: "Debian GNU/Linux 12 (bookworm)", Packages: 97,
			Layers: 3, Size: 30 << 20, Findings: []metadata.Finding{
				{ID: "CVE-2026-0100", Package: "tar", Installed: "1.34+dfsg-1.2", Fixed: "1.34+dfsg-1.2+deb12u1", Severity: "low"},
				{ID: "GHSA-abcd-efgh-ijkl", Package: "zlib", Installed: "1.2.13", Severity: "high", SourceSeverity: "HIGH"},
				{ID: "CVE-2026-12345", Package: "openssl", Installed: "3.0.11-1", Fixed: "3.0.15-1", Severity: "critical",
					Link: "https://security-tracker.debian.org/tracker/CVE-2026-12345"},
			}}
		img.Reasons = []metadata.Reason{
			{Type: metadata.ReasonSignature, Message: "no signature verifies with the vendor key", Policy: "signed-by-vendor",
				KeyID: "vendor-release-2026", Identity: "https://github.com/vendor/app/.github/workflows/release.yml@refs/tags/v2.4"},
			{Type: metadata.ReasonVulnerability, Message: "openssl: buffer overread in X.509 name checks", Policy: "no-critical",
				ID: "CVE-2026-12345", Package: "openssl", Installed: "3.0.11-1", Fixed: "3.0.15-1", Severity: "critical"},
		}
		img.Verdict = metadata.Verdict{State: metadata.StateQuarantined, Reasons: img.Reasons,
			Policies: []string{"signed-by-vendor", "no-critical"}, DecidedAt: now,
			Signatures: []metadata.SignatureEvidence{{Policy: "signed-by-vendor", Hash: "sha256:0f1e", Verified: false,
				Message: "2 signatures found; none verifies with key vendor-release-2026", Examined: 2, CheckedAt: now}},
			Waived: []metadata.Waived{{ID: "GHSA-abcd-efgh-ijkl", Package: "zlib", Severity: "high", Policy: "no-critical",
				Reason: "inflate is never called on untrusted input", Source: "policy", Until: waiver}},
			Recheck: waiver}
		return metadata.Change{Actor: "policy", Action: "decide", Reason: "checks finished"}, nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// browser is a client with a cookie jar that does not follow redirects,
// so tests see each answer.
type browser struct {
	t   *testing.T
	f   *fixture
	c   *http.Client
	jar *cookiejar.Jar
}

func (f *fixture) browser() *browser {
	jar, _ := cookiejar.New(nil)
	// A copy: srv.Client() is one client per server, and each browser
	// needs its own cookies.
	c := new(*f.srv.Client())
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: f.t, f: f, c: c, jar: jar}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (b *browser) do(method, path string, form url.Values, header ...string) answer {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(b.t.Context(), method, b.f.srv.URL+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(data)}
	for _, tok := range []string{admintest.AliceToken, admintest.UnnamedToken} {
		if strings.Contains(a.body, tok) {
			b.t.Fatalf("%s %s: the page shows a token", method, path)
		}
	}
	return a
}

func (b *browser) get(path string) answer { return b.do(http.MethodGet, path, nil) }

func (b *browser) post(path string, form url.Values) answer { return b.do(http.MethodPost, path, form) }

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF field in the page: %.400s", body)
	}
	return m[1]
}

// signIn signs in with token and returns the session's CSRF token.
func (b *browser) signIn(token string) string {
	b.t.Helper()
	login := b.get("/ui/login")
	a := b.post("/ui/login", url.Values{"csrf": {csrfOf(b.t, login.body)}, "token": {token}, "next": {"/ui/images"}})
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/ui/images" {
		b.t.Fatalf("sign-in = %d %s %.300s; want 303 to /ui/images", a.status, a.header.Get("Location"), a.body)
	}
	return csrfOf(b.t, b.get("/ui/images").body)
}

func wantStatus(t *testing.T, what string, a answer, status int, contains ...string) {
	t.Helper()
	if a.status != status {
		t.Fatalf("%s = %d; want %d\n%.1500s", what, a.status, status, a.body)
	}
	for _, c := range contains {
		if !strings.Contains(a.body, c) {
			t.Fatalf("%s: page lacks %q\n%.3000s", what, c, a.body)
		}
	}
}

func imagePath(repo string, d digest.Digest) string { return "/ui/images/" + repo + "@" + d.String() }

func digestOf(d interface{ String() string }) digest.Digest { return digest.Digest(d.String()) }
