package scanner

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.yaml.in/yaml/v3"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/scanner/scannertest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// feedServer serves what claircore's alpine and debian updaters fetch, in
// the layout of their real feeds: the Alpine secdb and a Debian mirror's
// dists plus the security tracker's JSON.
type feedServer struct {
	*httptest.Server
	failing  atomic.Bool
	requests atomic.Int64
}

const alpineSecDB = `{"distroversion":"v3.18","reponame":"main","urlprefix":"https://dl-cdn.alpinelinux.org/alpine","apkurl":"{{urlprefix}}/{{distroversion}}/{{reponame}}/{{arch}}/{{pkg.name}}-{{pkg.ver}}.apk",
"packages":[{"pkg":{"name":"busybox","secfixes":{"1.36.1-r6":["CVE-2023-42363"],"1.35.0-r3":["CVE-2022-28391"]}}}]}`

const debianTracker = `{"openssl":{"CVE-2024-5535":{"description":"SSL_select_next_proto buffer overread","releases":{"bookworm":{"status":"resolved","fixed_version":"3.0.14-1~deb12u1","urgency":"medium"},"sid":{"status":"resolved","fixed_version":"3.3.1-1","urgency":"medium"}}}}}`

var alpineRelease = regexp.MustCompile(`^/alpine/v3\.(\d+)/$`)

func newFeedServer(t *testing.T) *feedServer {
	f := &feedServer{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		if f.failing.Load() {
			http.Error(w, "mirror down for maintenance", http.StatusInternalServerError)
			return
		}
		p := r.URL.Path
		if m := alpineRelease.FindStringSubmatch(p); m != nil {
			if n, _ := strconv.Atoi(m[1]); n >= 3 && n <= 18 {
				return
			}
			http.NotFound(w, r)
			return
		}
		switch p {
		case "/alpine/last-update":
			fmt.Fprint(w, "2024-06-01T00:00:00Z")
		case "/alpine/v3.18/main.json":
			w.Header().Set("ETag", `"secdb-1"`)
			fmt.Fprint(w, alpineSecDB)
		case "/mirror/debian/dists/":
			fmt.Fprint(w, `<html><body><a href="../">../</a><a href="bookworm/">bookworm/</a><a href="bookworm-updates/">bookworm-updates/</a><a href="sid/">sid/</a></body></html>`)
		case "/mirror/debian/dists/bookworm/Release":
			fmt.Fprint(w, "Origin: Debian\nLabel: Debian\nSuite: stable\nVersion: 12.5\nCodename: bookworm\n")
		case "/tracker/json":
			w.Header().Set("Last-Modified", "Sat, 01 Jun 2024 00:00:00 GMT")
			fmt.Fprint(w, debianTracker)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func yamlNodes(t *testing.T, doc string) map[string]yaml.Node {
	t.Helper()
	var m map[string]yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestOnlineUpdaters runs claircore's real alpine and debian updaters
// against a feed server on loopback (their URLs overridden as a mirror's
// would be), scans images against what they loaded, and keeps that data
// when the feeds fail.
func TestOnlineUpdaters(t *testing.T) {
	t.Parallel()
	feeds := newFeedServer(t)
	e := open(t, "", nil, func(o *Options) {
		o.Config.Updaters = config.Updaters{
			Sets: []string{"alpine", "debian"},
			Config: yamlNodes(t, fmt.Sprintf(`
alpine:
  url: %[1]s/alpine/
debian:
  mirror_url: %[1]s/mirror/
  json_url: %[1]s/tracker/json
`, feeds.URL)),
			Interval: config.Duration(300 * time.Millisecond),
		}
	})
	e.run(t)
	waitMetric(t, func() float64 { return testutil.ToFloat64(e.s.metrics.updates.WithLabelValues("ok")) }, 1)

	tests := []struct {
		name  string
		files map[string]string
		want  metadata.Finding
	}{
		{"alpine", scannertest.AlpineFiles(
			scannertest.APK{Name: "busybox", Version: "1.36.1-r2", Origin: "busybox"},
			scannertest.APK{Name: "musl", Version: "1.2.4-r2", Origin: "musl"},
		), metadata.Finding{
			ID: "CVE-2023-42363", Package: "busybox", Installed: "1.36.1-r2", Fixed: "1.36.1-r6",
			Severity: metadata.SeverityUnknown, Link: "https://security.alpinelinux.org/vuln/CVE-2023-42363",
			Updater: "alpine-main-v3.18-updater",
		}},
		{"debian", scannertest.DebianFiles(vulnerableSSL...), metadata.Finding{
			ID: "CVE-2024-5535", Package: "libssl3", Installed: "3.0.11-1~deb12u2", Fixed: "3.0.14-1~deb12u1",
			Severity: metadata.SeverityHigh, SourceSeverity: "medium",
			Link: "https://security-tracker.debian.org/tracker/CVE-2024-5535", Updater: "debian/updater",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			layer := scannertest.Layer(t, scannertest.Gzip, tt.files)
			d := e.content.addImage(t, layer)
			e.enqueue(t, d)
			sc := e.results.wait(t, d, time.Minute, func(s metadata.Scan) bool { return isDone(s) && len(s.Findings) > 0 })
			ld, _ := layer.Digest()
			tt.want.Layer = digestOf(ld.String())
			if len(sc.Findings) != 1 || sc.Findings[0] != tt.want {
				t.Errorf("findings %+v\nwant [%+v]", sc.Findings, tt.want)
			}
		})
	}

	// The feeds fail: the failure is logged and counted, and the data of
	// the last good update stays.
	feeds.failing.Store(true)
	waitMetric(t, func() float64 { return testutil.ToFloat64(e.s.metrics.updates.WithLabelValues("failed")) }, 1)
	logs := e.logs.String()
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "vulnerability data update failed; the last good data stays in use") ||
		!strings.Contains(logs, "500") {
		t.Errorf("no warning naming the failure:\n%s", logs)
	}
	d := e.content.addImage(t, scannertest.Layer(t, scannertest.Zstd, scannertest.AlpineFiles(scannertest.APK{Name: "busybox", Version: "1.36.1-r5", Origin: "busybox"})))
	e.enqueue(t, d)
	sc := e.results.wait(t, d, time.Minute, isDone)
	if len(sc.Findings) != 1 || sc.Findings[0].ID != "CVE-2023-42363" {
		t.Errorf("after a failed update: %+v, want the finding from the last good data", sc.Findings)
	}
	if feeds.requests.Load() == 0 {
		t.Error("the feed server saw no request")
	}
}

func waitMetric(t *testing.T, get func() float64, atLeast float64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for get() < atLeast {
		if time.Now().After(deadline) {
			t.Fatalf("metric %v, want at least %v", get(), atLeast)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOpenWithEverySet builds every updater set without running it: Open
// asks the network nothing (the updaters fetch only when Run runs them).
func TestOpenWithEverySet(t *testing.T) {
	t.Parallel()
	sets := UpdaterSets()
	for _, want := range []string{"alpine", "debian", "osv", "rhel-vex", "ubuntu"} {
		if !slices.Contains(sets, want) {
			t.Errorf("UpdaterSets() = %v, lacks %s", sets, want)
		}
	}
	e := open(t, "", nil, func(o *Options) { o.Config.Updaters.Sets = sets })
	if e.s.updates == nil {
		t.Fatal("no updater manager")
	}
	if n := e.guard.refused.Load(); n != 0 {
		t.Errorf("Open dialed %v", e.guard.hosts())
	}
}
