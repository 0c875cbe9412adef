package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const examplePath = "../configs/airlock.example.yaml"

func TestExampleLoadsAndIsValid(t *testing.T) {
	t.Parallel()
	c, err := Load(examplePath)
	if err != nil {
		t.Fatalf("Load(%s): %v", examplePath, err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	hub := c.Upstream("dockerhub")
	if hub == nil || c.DefaultUpstream() != hub {
		t.Fatalf("dockerhub is not the default upstream: %+v", c.Upstreams)
	}
	if hub.Auth.UsernameFile == "" || hub.TagTTL.Std() != 10*time.Minute {
		t.Errorf("dockerhub entry lost values: %+v", hub)
	}
	if c.Cache.MaxSize != 80<<30 || c.Cache.EvictInterval.Std() != 5*time.Minute {
		t.Errorf("cache eviction keys = %v, %v; want 80GiB, 5m", c.Cache.MaxSize, c.Cache.EvictInterval)
	}
	// The minimal entry inherits the cache TTL.
	if q := c.Upstream("quay"); q == nil || q.TagTTL != c.Cache.TagTTL {
		t.Errorf("quay tagTTL = %v, want cache.tagTTL %v", q.TagTTL, c.Cache.TagTTL)
	}
}

// TestExampleHasEveryKey keeps the example complete: a field added to
// Config without a documented line in the example fails here.
func TestExampleHasEveryKey(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		t.Fatal(err)
	}
	keys := newKeyIndex()
	if errs := keys.walk(&root, configType, ""); len(errs) > 0 {
		t.Fatal(errs)
	}
	present := map[string]bool{}
	for k := range keys.lines {
		present[collapseIndexes(k)] = true
	}
	for _, want := range schemaKeys(configType, "") {
		if !present[want] {
			t.Errorf("%s does not show key %q", examplePath, want)
		}
	}
}

// schemaKeys lists the key paths of t, with "[]" for any sequence index.
// Maps and yaml.Node values are leaves: their keys are free-form.
func schemaKeys(t reflect.Type, path string) []string {
	var out []string
	for name, ft := range yamlFields(t) {
		p := join(path, name)
		out = append(out, p)
		if ft.Kind() == reflect.Slice {
			ft, p = ft.Elem(), p+"[]"
		}
		if ft.Kind() == reflect.Struct && ft != nodeType && !reflect.PointerTo(ft).Implements(unmarshalerType) {
			out = append(out, schemaKeys(ft, p)...)
		}
	}
	slices.Sort(out)
	return out
}

func collapseIndexes(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		if key[i] == '[' {
			j := strings.IndexByte(key[i:], ']')
			b.WriteString("[]")
			i += j
			continue
		}
		b.WriteByte(key[i])
	}
	return b.String()
}

func TestDefault(t *testing.T) {
	t.Parallel()
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default() is invalid: %v", err)
	}
	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", what, got, want)
		}
	}
	check("listen", c.Listen, "127.0.0.1:5000")
	check("auth", c.Auth.Enabled(), false)
	check("admin.listen", c.Admin.Listen, "127.0.0.1:5001")
	check("admin.tokenFile", c.Admin.TokenFile, "")
	check("storage.path", c.Storage.Path, "./airlock-data")
	check("storage.driver", c.Storage.Driver, "filesystem")
	check("storage.parameters", c.Storage.Parameters, map[string]any{"rootdirectory": filepath.Join("airlock-data", "blobs")})
	check("cache.tagTTL", c.Cache.TagTTL, Duration(5*time.Minute))
	check("cache.maxManifestBytes", c.Cache.MaxManifestBytes, int64(4<<20))
	check("cache.maxSize", c.Cache.MaxSize, Size(0))
	check("cache.evictInterval", c.Cache.EvictInterval, Duration(5*time.Minute))
	check("log", c.Log, Log{Level: "info", Format: "json"})
	check("shutdown.drainTimeout", c.Shutdown.DrainTimeout, Duration(30*time.Second))
	check("tls.enabled", c.TLS.Enabled(), false)
	check("policies", len(c.Policies), 0)

	type up struct {
		name, url string
		aliases   []string
		def       bool
	}
	var got []up
	for _, u := range c.Upstreams {
		got = append(got, up{u.Name, u.URL, u.Aliases, u.Default})
		check(u.Name+".auth", u.Auth.Anonymous(), true)
		check(u.Name+".repositories", len(u.Repositories), 0)
		check(u.Name+".tagTTL", u.TagTTL, Duration(5*time.Minute))
		check(u.Name+".timeouts", u.Timeouts, Timeouts{Header: Duration(30 * time.Second), Idle: Duration(time.Minute)})
		check(u.Name+".retry", u.Retry, Retry{MaxAttempts: 4, BaseDelay: Duration(200 * time.Millisecond), MaxDelay: Duration(10 * time.Second)})
	}
	check("upstreams", got, []up{
		{"dockerhub", "https://registry-1.docker.io", []string{"docker.io"}, true},
		{"gcr", "https://gcr.io", []string{"gcr.io"}, false},
		{"quay", "https://quay.io", []string{"quay.io"}, false},
	})
	check("default upstream", c.DefaultUpstream().Name, "dockerhub")

	// Each call is independent: changing one must not change the next.
	c.Upstreams[0].Name = "changed"
	if Default().Upstreams[0].Name != "dockerhub" {
		t.Error("Default() returned shared state")
	}
}

func TestMinimalGetsDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse("min.yaml", []byte("upstreams:\n  - name: hub\n    url: http://127.0.0.1:5999/\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.Listen != d.Listen || c.Admin != d.Admin || c.Log != d.Log || c.Cache != d.Cache || c.Shutdown != d.Shutdown {
		t.Errorf("top-level defaults differ from Default():\n got %+v\nwant %+v", c, d)
	}
	u := c.Upstreams[0]
	if u.URL != "http://127.0.0.1:5999" {
		t.Errorf("url = %q, want the trailing slash removed", u.URL)
	}
	if u.Retry != d.Upstreams[0].Retry || u.Timeouts != d.Upstreams[0].Timeouts || u.TagTTL != c.Cache.TagTTL {
		t.Errorf("upstream defaults not applied: %+v", u)
	}
	if c.DefaultUpstream() != nil {
		t.Error("no upstream is marked default, yet DefaultUpstream() returned one")
	}
}

func TestExplicitValuesKept(t *testing.T) {
	t.Parallel()
	c, err := Parse("x.yaml", []byte(`
cache: {tagTTL: 1m}
storage: {path: /data, driver: s3, parameters: {bucket: b, region: eu-west-1}}
upstreams:
  - name: a
    url: https://a.example
    tagTTL: 2h
    retry: {maxAttempts: 1, baseDelay: 1s, maxDelay: 1s}
  - name: b
    url: https://b.example
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Upstreams[0].TagTTL.Std(); got != 2*time.Hour {
		t.Errorf("upstreams[0].tagTTL = %v, want 2h", got)
	}
	if got := c.Upstreams[1].TagTTL.Std(); got != time.Minute {
		t.Errorf("upstreams[1].tagTTL = %v, want cache.tagTTL 1m", got)
	}
	if got := c.Upstreams[0].Retry.MaxAttempts; got != 1 {
		t.Errorf("retry.maxAttempts = %d, want 1", got)
	}
	want := map[string]any{"bucket": "b", "region": "eu-west-1"}
	if !reflect.DeepEqual(c.Storage.Parameters, want) {
		t.Errorf("storage.parameters = %v, want %v (no rootdirectory for s3)", c.Storage.Parameters, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
}

func TestLoadNamesFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.yaml")
	if err := os.WriteFile(path, []byte("listen: :5000\nupstream: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	want := path + `:2: unknown key "upstream" (did you mean "upstreams"?)`
	if err == nil || err.Error() != want {
		t.Fatalf("Load error:\n got %v\nwant %s", err, want)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error does not wrap ErrInvalid: %v", err)
	}
}

func TestDurationYAML(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{in: `"1h30m"`, want: 90 * time.Minute},
		{in: `250ms`, want: 250 * time.Millisecond},
		{in: `0`, want: 0},
		{in: `30`, err: `"30" is not a duration`},
		{in: `soon`, err: `"soon" is not a duration`},
		{in: `[1s]`, err: "want a duration"},
	} {
		var v struct {
			D Duration `yaml:"d"`
		}
		err := yaml.Unmarshal([]byte("d: "+tc.in), &v)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || v.D.Std() != tc.want {
			t.Errorf("%s: got %v, %v; want %v", tc.in, v.D, err, tc.want)
		}
		out, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var back struct {
			D Duration `yaml:"d"`
		}
		if err := yaml.Unmarshal(out, &back); err != nil || back.D != v.D {
			t.Errorf("%s: round trip through %q gave %v, %v", tc.in, out, back.D, err)
		}
	}
}
