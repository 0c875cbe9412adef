package console_test

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestBrowser drives Debian's chromium, headless, through the console as
// an admin would: a wrong token is refused, the right one signs in; a
// search finds the quarantined image, its page says why, a release with a
// reason and an expiry makes it released and lands in the audit log under
// the token's name; a form posted without its CSRF token changes nothing;
// and the pages ask nothing of any host but airlock.
//
// With AIRLOCK_SCREENSHOTS=<dir> (relative to the repository root, e.g.
// docs/console) it saves a screenshot of each page there.
func TestBrowser(t *testing.T) {
	chrome := clients.Require(t, "chromium", "chromium")
	f := newFixture(t, false)
	shots := screenshotDir(t)
	// A few more images, so that the pages (and their screenshots) show
	// what a working airlock holds: approved ones and a blocked one.
	for _, name := range []string{"library/nginx", "library/redis", "team/tool"} {
		img := f.h.Upstream.PushImage(t, name, "1.27", 256, 2)
		f.h.MustPull("hub/"+name, "1.27", http.StatusOK)
		if name == "team/tool" {
			if _, err := f.h.Gate.Block(t.Context(), "hub/"+name, digest.Digest(img.Digest.String()), "admin:bob",
				"CVE-2026-0001 is exploited in the wild; wait for 1.27.1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	f.h.Upstream.PushIndex(t, "library/busybox", "latest", 256, 1)
	f.h.MustPull("hub/library/busybox", "latest", http.StatusOK)
	// One image waits for its vulnerability scan, and the scanned one's
	// SBOM can be downloaded.
	f.seed(digest.FromString("waiting"), func(img *metadata.Image) {
		img.State = metadata.StatePending
		img.Tags = []string{"2.5"}
		img.Scan = &metadata.Scan{State: metadata.ScanQueued, Queued: f.h.Clock.Now().Add(-40 * time.Second)}
	})
	f.serveConsole(&sbomSource{docs: map[digest.Digest]string{f.scanned: `"packages":97`}})

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900), chromedp.DisableGPU,
		// Nothing may leave the machine, even by accident: every host but
		// loopback (which Chromium never proxies) goes to a closed port.
		chromedp.ProxyServer("http://127.0.0.1:9"))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 50*time.Second)
	defer cancelTimeout()

	var mu sync.Mutex
	var requested []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			requested = append(requested, e.Request.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}

	base := f.srv.URL
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return s
	}
	location := func() string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Location())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	shoot := func(name string) {
		t.Helper()
		if shots == "" {
			return
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Unsigned, the console sends us to the sign-in form; a wrong token
	// is refused there.
	do("open the console", chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.CSS("input[name=token]")))
	if loc := location(); !strings.Contains(loc, "/ui/login") {
		t.Fatalf("unsigned /ui/ went to %s; want the sign-in form", loc)
	}
	shoot("login")
	do("sign in with a wrong token",
		chromedp.SendKeys(chromedp.CSS("input[name=token]"), "not-a-token-of-this-airlock"),
		chromedp.Click(chromedp.CSS("form button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#login-error")))
	if msg := text("#login-error"); !strings.Contains(msg, "not one of admin.tokenFile's tokens") {
		t.Fatalf("wrong token: the page says %q", msg)
	}
	if loc := location(); !strings.Contains(loc, "/ui/login") {
		t.Fatalf("a wrong token went on to %s", loc)
	}

	do("sign in",
		chromedp.SendKeys(chromedp.CSS("input[name=token]"), admintest.AliceToken),
		chromedp.Click(chromedp.CSS("form button[type=submit]")),
		chromedp.WaitVisible(chromedp.CSS("#states-h")))
	if who := text(".who"); !strings.Contains(who, "admin:alice") {
		t.Fatalf("signed in as %q; want admin:alice", who)
	}
	if scans := text("#scans"); !strings.Contains(scans, "1 image pending a scan") {
		t.Fatalf("the overview's scans read %q", scans)
	}
	shoot("overview")

	// Find the quarantined image by search and open it.
	do("search", chromedp.Navigate(base+"/ui/images"), chromedp.WaitVisible(chromedp.CSS("#q")),
		chromedp.SendKeys(chromedp.CSS("#q"), appRepo+":1.1"),
		chromedp.Click(chromedp.CSS("form.filters button[type=submit]")),
		// The unfiltered list is visible too: wait for the page the search
		// loads, whose search box carries the query as its value attribute.
		chromedp.WaitVisible(chromedp.CSS(`#q[value="`+appRepo+`:1.1"]`)),
		chromedp.WaitVisible(chromedp.CSS("table a.repo")))
	if rows := text("tbody"); !strings.Contains(rows, "quarantined") || strings.Contains(rows, "approved") {
		t.Fatalf("searching %s:1.1 lists %q; want the quarantined image only", appRepo, rows)
	}
	do("clear the search", chromedp.Navigate(base+"/ui/images?sort=state"), chromedp.WaitVisible(chromedp.CSS("table a.repo")))
	shoot("images")
	do("search again", chromedp.Navigate(base+"/ui/images?q="+url.QueryEscape(appRepo+":1.1")),
		chromedp.Click(chromedp.CSS("table a.repo")), chromedp.WaitVisible(chromedp.CSS("#state")))
	if st := text("#state"); st != "quarantined" {
		t.Fatalf("image state reads %q; want quarantined", st)
	}
	if why := text(".reason"); !strings.Contains(why, "hcl-pinned") || !strings.Contains(why, "1.1") {
		t.Fatalf("the reason reads %q; want the policy and the tag", why)
	}
	imageLoc := location()
	shoot("image")

	// Release with a reason and an expiry, confirming the change.
	expires := f.h.Clock.Now().AddDate(0, 1, 0).Format(time.DateOnly)
	do("release",
		chromedp.SendKeys(chromedp.CSS("#release-reason"), "vendor confirmed the digest in ticket SEC-1234"),
		chromedp.SendKeys(chromedp.CSS("#release-expires"), expires),
		chromedp.Click(chromedp.CSS(`form[action$="/release"] button[type=submit]`)),
		chromedp.WaitReady(chromedp.CSS(`form[action$="/release"] input[name=confirm]`)))
	if h := text("h1"); !strings.HasPrefix(h, "Release ") {
		t.Fatalf("after Release the page is %q; want a confirmation", h)
	}
	shoot("confirm")
	do("confirm the release", chromedp.Click(chromedp.CSS(`form[action$="/release"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(".flash.ok")))
	if st := text("#state"); st != "released" {
		t.Fatalf("after the release the state reads %q; want released", st)
	}
	if msg := text(".flash.ok"); !strings.Contains(msg, "admin:alice") {
		t.Fatalf("the result reads %q; want it to name admin:alice", msg)
	}
	if trail := text("#trail-h + .table-wrap"); !strings.Contains(trail, "admin:alice") || !strings.Contains(trail, "SEC-1234") {
		t.Fatalf("the image's audit trail reads %q; want the release", trail)
	}
	shoot("image-released")

	do("audit log", chromedp.Navigate(base+"/ui/audit"), chromedp.WaitVisible(chromedp.CSS("tbody")))
	if row := text("tbody tr"); !strings.Contains(row, "admin:alice") || !strings.Contains(row, "release") ||
		!strings.Contains(row, "SEC-1234") {
		t.Fatalf("the newest audit record reads %q; want alice's release", row)
	}
	if v := text(".verify-ok"); !strings.Contains(v, "verified") {
		t.Fatalf("audit verify reads %q", v)
	}
	shoot("audit")

	// A form posted without its CSRF token is refused, and nothing changes.
	do("post without CSRF", chromedp.Navigate(imageLoc), chromedp.WaitVisible(chromedp.CSS("#block-reason")),
		chromedp.SendKeys(chromedp.CSS("#block-reason"), "forged"))
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](
		`document.querySelectorAll('form[action$="/block"] input[name=csrf]').forEach(e => e.remove()); true`)); err != nil {
		t.Fatal(err)
	}
	do("submit the block form", chromedp.Click(chromedp.CSS(`form[action$="/block"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("p[role=alert]")))
	if msg := text("p[role=alert]"); !strings.Contains(msg, "CSRF") {
		t.Fatalf("a form without its CSRF token answered %q", msg)
	}
	if img, err := f.h.Meta.Image(t.Context(), appRepo, f.quarantined); err != nil || img.State != metadata.StateReleased {
		t.Fatalf("after the refused post the image is %v, %v; want released", img.State, err)
	}

	// The other pages at the size of a phone, and an image with findings.
	do("findings", chromedp.Navigate(base+imagePath(vulnRepo, f.scanned)), chromedp.WaitVisible(chromedp.CSS("#state")))
	if vulns := text("#vulns"); !strings.Contains(vulns, "CVE-2026-12345") || !strings.Contains(vulns, "refuses the image") ||
		!strings.Contains(vulns, "waived by no-critical") {
		t.Fatalf("the findings table reads %q", vulns)
	}
	if scan := text("#scan"); !strings.Contains(scan, "Debian GNU/Linux 12 (bookworm)") || !strings.Contains(scan, "SPDX") ||
		!strings.Contains(scan, "CycloneDX") {
		t.Fatalf("the scan reads %q", scan)
	}
	shoot("image-findings")
	do("narrow", chromedp.EmulateViewport(390, 844),
		chromedp.Navigate(imageLoc), chromedp.WaitVisible(chromedp.CSS("#state")))
	shoot("image-narrow")

	mu.Lock()
	defer mu.Unlock()
	if len(requested) < 10 {
		t.Fatalf("saw only %d requests; the network listener is not working", len(requested))
	}
	for _, u := range requested {
		p, err := url.Parse(u)
		if err != nil || p.Scheme+"://"+p.Host != base {
			t.Errorf("the page requested %s; only %s may be asked", u, base)
		}
	}
}

// screenshotDir is where AIRLOCK_SCREENSHOTS asks screenshots to go, ""
// when it is unset.
func screenshotDir(t *testing.T) string {
	dir := os.Getenv("AIRLOCK_SCREENSHOTS")
	if dir == "" {
		return ""
	}
	if !filepath.IsAbs(dir) {
		root, err := filepath.Abs("../..") // admin/console → the repository
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
