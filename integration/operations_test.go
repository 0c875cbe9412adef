package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// scrape reads airlock's /metrics and returns every sample by metric name.
func scrape(t *testing.T, a *airlocktest.Airlock) map[string][]*model.Sample {
	t.Helper()
	r := e2eMustGet(t, http.StatusOK, a.AdminURL+"/metrics")
	dec := expfmt.SampleDecoder{
		Dec:  expfmt.NewDecoder(bytes.NewReader(r.Body), expfmt.ResponseFormat(r.Header)),
		Opts: &expfmt.DecodeOptions{Timestamp: model.Now()},
	}
	out := map[string][]*model.Sample{}
	for {
		var v model.Vector
		if err := dec.Decode(&v); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decoding /metrics: %v", err)
		}
		for _, s := range v {
			name := string(s.Metric[model.MetricNameLabel])
			out[name] = append(out[name], s)
		}
	}
	return out
}

// sum adds the samples of name whose labels include all of match.
func sum(samples map[string][]*model.Sample, name string, match ...string) float64 {
	var total float64
outer:
	for _, s := range samples[name] {
		for i := 0; i+1 < len(match); i += 2 {
			if string(s.Metric[model.LabelName(match[i])]) != match[i+1] {
				continue outer
			}
		}
		total += float64(s.Value)
	}
	return total
}

// settle waits until airlock has no upstream transfer running: a client
// has its bytes as soon as they verify, the commit to the store follows.
func settle(t *testing.T, a *airlocktest.Airlock) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for sum(scrape(t, a), "airlock_fills_in_flight") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("upstream transfers still running after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMetricsMoveWithPulls(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "1.0", 64<<10, 2)
	a := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(up)}})

	base := a.URL + "/v2/dockerhub/library/app"
	e2ePullHTTP(t, up, base, "1.0", img) // cold
	settle(t, a)
	e2ePullHTTP(t, up, base, "1.0", img) // warm
	m := scrape(t, a)

	checks := []struct {
		what string
		got  float64
		ok   func(float64) bool
	}{
		{"manifest requests answered 200", sum(m, "airlock_http_requests_total", "kind", "manifest", "code", "200"), func(v float64) bool { return v >= 2 }},
		{"blob cache misses", sum(m, "airlock_cache_requests_total", "upstream", "dockerhub", "kind", "blob", "result", "miss"), func(v float64) bool { return v == 3 }},
		{"blob cache hits", sum(m, "airlock_cache_requests_total", "upstream", "dockerhub", "kind", "blob", "result", "hit"), func(v float64) bool { return v == 3 }},
		{"manifest cache hits", sum(m, "airlock_cache_requests_total", "kind", "manifest", "result", "hit"), func(v float64) bool { return v >= 1 }},
		{"bytes from upstream", sum(m, "airlock_bytes_total", "source", "upstream"), func(v float64) bool { return v >= 2*64<<10 }},
		{"bytes from cache", sum(m, "airlock_bytes_total", "source", "cache"), func(v float64) bool { return v >= 2*64<<10 }},
		{"bytes saved", sum(m, "airlock_bytes_saved_total", "upstream", "dockerhub"), func(v float64) bool { return v >= 2*64<<10 }},
		{"upstream blob requests", sum(m, "airlock_upstream_requests_total", "upstream", "dockerhub", "op", "blob", "code", "200"), func(v float64) bool { return v == 3 }},
		{"upstream manifest requests", sum(m, "airlock_upstream_requests_total", "op", "manifest"), func(v float64) bool { return v >= 2 }},
		{"upstream latency observations", sum(m, "airlock_upstream_request_duration_seconds_count", "op", "blob"), func(v float64) bool { return v == 3 }},
		{"request duration observations", sum(m, "airlock_http_request_duration_seconds_count", "kind", "blob"), func(v float64) bool { return v == 6 }},
		{"fills in flight after the pulls", sum(m, "airlock_fills_in_flight"), func(v float64) bool { return v == 0 }},
		{"digest mismatches", sum(m, "airlock_digest_mismatches_total"), func(v float64) bool { return v == 0 }},
	}
	for _, c := range checks {
		if !c.ok(c.got) {
			t.Errorf("%s: %v", c.what, c.got)
		}
	}
}

// TestCacheSizeIsMeasured checks that the evictor runs in the served
// process: the cache size gauge reports the blobs a pull committed, and
// the metadata index is measured too, as it counts toward cache.maxSize.
// (Eviction order and limits are tested in storage/evict.)
func TestCacheSizeIsMeasured(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "1", 64<<10, 2)
	a := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(up)},
		MaxSize: "1GiB", EvictInterval: "200ms"})
	e2ePullHTTP(t, up, a.URL+"/v2/library/app", "1", img)
	settle(t, a)
	var want float64
	for _, b := range img.Blobs() {
		want += float64(len(up.Blob(t, b)))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := scrape(t, a)
		got := sum(m, "airlock_cache_size_bytes")
		if got == want {
			if index := sum(m, "airlock_cache_index_bytes"); index <= 0 {
				t.Fatalf("airlock_cache_index_bytes = %v; the metadata index is not counted", index)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("airlock_cache_size_bytes = %v, want %v (the blobs pulled)", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSecretsNeverLogged(t *testing.T) {
	t.Parallel()
	const user, password = "planted-user", "planted-S3CRET-value-4f1c"
	up := upstreamtest.New(t, upstreamtest.Options{Auth: upstreamtest.DockerHubStyle, Username: user, Password: password})
	img := up.PushImage(t, "library/app", "1", 4<<10, 1)
	hub := e2eDockerHub(up)
	hub.Auth = e2eCredentialFiles(t, user, password)
	pf := hub.Auth.PasswordFile
	a := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{hub}})
	e2ePullHTTP(t, up, a.URL+"/v2/library/app", "1", img)

	// Then make the credentials wrong, so the error paths log too.
	if err := os.WriteFile(pf, []byte("wrong-"+password), 0o600); err != nil {
		t.Fatal(err)
	}
	up.PushImage(t, "library/other", "1", 4<<10, 1)
	if r, _ := e2eGet(t.Context(), a.URL+"/v2/library/other/manifests/1"); r.Status == http.StatusOK {
		t.Fatal("wrong credentials were accepted")
	}
	var tokens []string
	for _, r := range up.Requests() {
		if v, ok := strings.CutPrefix(r.Authorization, "Bearer "); ok {
			tokens = append(tokens, v)
		}
	}
	if len(tokens) == 0 {
		t.Fatal("the upstream saw no bearer token: the test does not exercise token auth")
	}
	logs := a.Logs()
	if len(logs) < 3 {
		t.Fatalf("only %d log lines; the check below would prove nothing", len(logs))
	}
	for _, l := range logs {
		for _, secret := range append([]string{password, "Basic ", "Authorization"}, tokens...) {
			if strings.Contains(l.Raw, secret) {
				t.Errorf("log line contains %q: %s", secret, l.Raw)
			}
		}
	}
}

func TestSIGTERMDrainsInFlightPull(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "1", 3<<20, 1)
	a := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{e2eDockerHub(up)}, ReadyDelay: "1s"})
	layer := img.Layers[0]
	up.Throttle(2 << 20) // about 1.5s for the layer

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL+"/v2/library/app/blobs/"+layer.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 4096)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}

	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop() }()
	// Readiness turns false while the pull is still being served.
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, err := e2eGet(t.Context(), a.AdminURL+"/readyz")
		if err == nil && r.Status == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness did not turn false after SIGTERM (last: %v %v)", r.Status, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// During shutdown.readyDelay new pulls are still answered, so clients
	// routed here before the endpoints update are not refused.
	if r, err := e2eGet(t.Context(), a.URL+"/v2/"); err != nil || r.Status != http.StatusOK {
		t.Fatalf("a new request during readyDelay: %v %v", r.Status, err)
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("the in-flight pull was cut by SIGTERM: %v", err)
	}
	if got := sha256Of(append(first, rest...)); got != layer {
		t.Fatalf("drained pull has digest %s, want %s", got, layer)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	// A rolling update: the next airlock serves the drained download from cache.
	a.Restart(t)
	up.Reset()
	b := e2eMustGet(t, http.StatusOK, a.URL+"/v2/library/app/blobs/"+layer.String())
	if sha256Of(b.Body) != layer || up.BlobGETs(layer) != 0 {
		t.Fatalf("after restart: digest %s, %d upstream GETs", sha256Of(b.Body), up.BlobGETs(layer))
	}
}

func TestSIGHUPReloadsAllowList(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "team/app", "1", 4<<10, 1)
	big := up.PushImage(t, "library/big", "1", 2<<20, 1)
	hub := e2eDockerHub(up)
	hub.Repositories = []string{"library/*"}
	a := e2eStart(t, airlocktest.Config{Upstreams: []airlocktest.Upstream{hub}})
	url := a.URL + "/v2/team/app/manifests/1"
	e2eMustGet(t, http.StatusForbidden, url)

	// A pull that runs across both reloads below must not be cut.
	up.Throttle(1 << 20)
	inflight := make(chan error, 1)
	go func() {
		r, err := e2eGet(t.Context(), a.URL+"/v2/library/big/blobs/"+big.Layers[0].String())
		if err == nil && (r.Status != http.StatusOK || sha256Of(r.Body) != big.Layers[0]) {
			err = fmt.Errorf("status %d, digest %s", r.Status, sha256Of(r.Body))
		}
		inflight <- err
	}()
	time.Sleep(200 * time.Millisecond)

	original, err := os.ReadFile(a.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	reload := func(t *testing.T, data []byte, wantMsg string) {
		t.Helper()
		if err := os.WriteFile(a.ConfigPath, data, 0o600); err != nil {
			t.Fatal(err)
		}
		before := len(a.LogsContaining(wantMsg))
		if err := a.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		for len(a.LogsContaining(wantMsg)) == before {
			if ctx.Err() != nil {
				t.Fatalf("no %q log line after SIGHUP", wantMsg)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// A broken file is refused and the running configuration stays.
	reload(t, append(bytes.Clone(original), []byte("\nnot-a-key: 1\n")...), "configuration reload refused")
	e2eMustGet(t, http.StatusForbidden, url)

	var doc map[string]any
	if err := yaml.Unmarshal(original, &doc); err != nil {
		t.Fatal(err)
	}
	doc["upstreams"].([]any)[0].(map[string]any)["repositories"] = []string{"library/*", "team/*"}
	widened, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	reload(t, widened, "configuration reloaded")
	m := e2eMustGet(t, http.StatusOK, url, "Accept", manifestAccept)
	if !bytes.Equal(m.Body, img.Manifest) {
		t.Fatal("manifest after reload differs from upstream's")
	}
	if !a.Running() {
		t.Fatal("airlock exited on SIGHUP")
	}
	if err := <-inflight; err != nil {
		t.Fatalf("a pull running during the reloads: %v", err)
	}
}

// TestConfigCheckExitCodes runs the built binary as an operator would.
func TestConfigCheckExitCodes(t *testing.T) {
	t.Parallel()
	if e2eBuildErr != nil {
		t.Fatalf("no airlock binary: %v", e2eBuildErr)
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte("upstreams:\n  - {name: hub, url: 'https://registry-1.docker.io', default: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("upstreams:\n  - {name: hub, url: 'https://registry-1.docker.io', defualt: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file     string
		wantCode int
		wantOut  string
	}{
		{good, 0, "valid"},
		{bad, 1, `"defualt"`},
	} {
		out, err := exec.Command(e2eBinary.Path, "config", "check", "--config", tc.file).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.wantCode || !strings.Contains(string(out), tc.wantOut) {
			t.Errorf("config check %s: exit %d, output %q; want exit %d naming %s", filepath.Base(tc.file), code, out, tc.wantCode, tc.wantOut)
		}
	}
}
