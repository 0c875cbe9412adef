package integration

import (
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// TestReloadWarnsOfRestartKeys changes, in one SIGHUP, keys that a running
// airlock applies and keys it cannot: each of the second is named in a
// warning and the running value stays.
func TestReloadWarnsOfRestartKeys(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	up.PushImage(t, "team/app", "1", 4<<10, 1)
	hub := e2eDockerHub(up)
	hub.Repositories = []string{"library/*"}
	a := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{hub}})
	url := a.URL + "/v2/team/app/manifests/1"
	e2eMustGet(t, http.StatusForbidden, url)

	original, err := os.ReadFile(a.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(original, &doc); err != nil {
		t.Fatal(err)
	}
	doc["listen"] = "127.0.0.1:1"
	doc["log"].(map[string]any)["format"] = "text"
	doc["upstreams"].([]any)[0].(map[string]any)["repositories"] = []string{"library/*", "team/*"}
	changed, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.ConfigPath, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	reloaded, err := a.WaitLog(t.Context(), func(l airlocktest.LogLine) bool { return l.Msg() == "configuration reloaded" })
	if err != nil {
		t.Fatal(err)
	}
	warned := map[string]bool{}
	for _, l := range a.LogsContaining("takes effect only after a restart") {
		if l.Level() != "WARN" {
			t.Errorf("restart notice at level %s, want WARN: %s", l.Level(), l.Raw)
		}
		key, _ := l.Fields["key"].(string)
		warned[key] = true
	}
	if len(warned) != 2 || !warned["listen"] || !warned["log.format"] {
		t.Errorf("restart warnings for %v, want listen and log.format; reload line: %s", warned, reloaded.Raw)
	}
	if !strings.Contains(reloaded.Raw, `"applied":["upstreams[0].repositories"]`) {
		t.Errorf("reload line does not list the applied allow-list: %s", reloaded.Raw)
	}
	// Applied: the allow-list. Kept: the listener the test talks to.
	e2eMustGet(t, http.StatusOK, url, "Accept", manifestAccept)
}

// TestVersionAndBuildInfo runs the built binary as an operator would:
// `airlock version` and `--version` agree, and a running airlock names its
// build, configuration and upstreams at start and on /metrics.
func TestVersionAndBuildInfo(t *testing.T) {
	t.Parallel()
	if e2eBuildErr != nil {
		t.Fatalf("no airlock binary: %v", e2eBuildErr)
	}
	var printed []string
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(e2eBinary.Path, arg).Output()
		if err != nil {
			t.Fatalf("airlock %s: %v", arg, err)
		}
		if !strings.HasPrefix(string(out), "airlock ") || !strings.Contains(string(out), "(commit ") {
			t.Errorf("airlock %s = %q, want \"airlock <version> (commit <revision>, <go version>)\"", arg, out)
		}
		printed = append(printed, string(out))
	}
	if printed[0] != printed[1] {
		t.Errorf("version %q and --version %q differ", printed[0], printed[1])
	}

	up := upstreamtest.New(t, upstreamtest.Options{})
	a := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(up)}})
	// Ready comes a moment before the start-up line is written.
	start := a.LogsContaining(`"msg":"airlock serving"`)
	for deadline := time.Now().Add(10 * time.Second); len(start) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		start = a.LogsContaining(`"msg":"airlock serving"`)
	}
	if len(start) != 1 {
		t.Fatalf("%d start-up lines", len(start))
	}
	f := start[0].Fields
	version, _ := f["version"].(string)
	commit, _ := f["commit"].(string)
	if version == "" || commit == "" || !strings.Contains(printed[0], version) || !strings.Contains(printed[0], commit) {
		t.Errorf("start-up line version %q commit %q, `airlock version` says %q", version, commit, printed[0])
	}
	if f["config"] != a.ConfigPath || f["registry"] != a.Host {
		t.Errorf("start-up line config %v registry %v, want %s and %s", f["config"], f["registry"], a.ConfigPath, a.Host)
	}
	ups, _ := f["upstreams"].([]any)
	if len(ups) != 1 || ups[0].(map[string]any)["name"] != "dockerhub" || ups[0].(map[string]any)["host"] != strings.TrimPrefix(up.URL, "http://") {
		t.Errorf("start-up line upstreams = %v", f["upstreams"])
	}
	samples := scrape(t, a)
	if got := sum(samples, "airlock_build_info", "version", version, "commit", commit); got != 1 {
		t.Errorf("airlock_build_info{version=%q,commit=%q} = %v, want 1", version, commit, got)
	}
}
