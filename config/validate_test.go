package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// valid is a small configuration that passes validation; each case below
// appends or overrides keys to break exactly one rule.
const validBase = `
listen: 127.0.0.1:5000
upstreams:
  - name: hub
    url: https://registry-1.docker.io
    aliases: [docker.io]
    default: true
  - name: quay
    url: https://quay.io
`

func TestValidBaseIsValid(t *testing.T) {
	t.Parallel()
	if _, err := Parse("base.yaml", []byte(validBase)); err != nil {
		t.Fatal(err)
	}
}

func TestValidationErrors(t *testing.T) {
	t.Parallel()
	up := func(extra string) string {
		return "upstreams:\n  - name: hub\n    url: https://hub.example\n" + extra
	}
	for _, tc := range []struct {
		name string
		yaml string
		want string // key path and the start of its message
		line int    // line the error must point at; 0: do not check
	}{
		{"listen no port", "listen: localhost\n" + up(""), "listen: \"localhost\" is not host:port (missing port in address)", 1},
		{"listen bad port", "listen: :http\n" + up(""), `listen: port "http" is not a number`, 1},
		{"listen port range", "listen: :70000\n" + up(""), `listen: port "70000"`, 1},
		{"admin listen", "admin: {listen: nowhere}\n" + up(""), `admin.listen: "nowhere" is not host:port`, 1},
		{"admin same port", "listen: :5000\nadmin: {listen: \":5000\"}\n" + up(""), `admin.listen: ":5000" is also the registry listen address`, 2},
		{"admin same port on every interface", "listen: :5000\nadmin: {listen: \"127.0.0.1:5000\"}\n" + up(""), `admin.listen: "127.0.0.1:5000" is also the registry listen address`, 2},
		{"admin same port on 0.0.0.0", "listen: 127.0.0.1:5000\nadmin: {listen: \"0.0.0.0:5000\"}\n" + up(""), `admin.listen: "0.0.0.0:5000" is also the registry listen address`, 2},
		{"tls half", "tls: {certFile: /c.pem}\n" + up(""), "tls: certFile and keyFile must be set together", 1},
		// Serve hands these to the filesystem driver, which refuses them.
		{"storage maxthreads", "storage: {parameters: {maxthreads: lots}}\n" + up(""), `storage.parameters.maxthreads: maxthreads config error: parameter must be an integer, 'lots' invalid; set an integer, 25 or more`, 1},
		{"storage parameter typo", "storage: {parameters: {rootdir: /srv}}\n" + up(""), `storage.parameters.rootdir: unknown parameter of the filesystem driver`, 1},
		{"storage rootdirectory type", "storage: {parameters: {rootdirectory: [a]}}\n" + up(""), `storage.parameters.rootdirectory: want the path of a directory`, 1},
		{"storage driver", "storage: {driver: s4}\n" + up(""), `storage.driver: unknown driver "s4"; use filesystem, s3, gcs or azure`, 1},
		{"manifest too big", "cache: {maxManifestBytes: 4194305}\n" + up(""), "cache.maxManifestBytes: 4194305 is out of range", 1},
		{"manifest negative", "cache: {maxManifestBytes: -1}\n" + up(""), "cache.maxManifestBytes: -1 is out of range", 1},
		{"negative tagTTL", "cache:\n  tagTTL: -1s\n" + up(""), "cache.tagTTL: -1s is negative", 2},
		{"negative maxBlobSize", "cache: {maxBlobSize: -1}\n" + up(""), `cache.maxBlobSize: "-1" is negative`, 1},
		{"negative drain", "shutdown: {drainTimeout: -5s}\n" + up(""), "shutdown.drainTimeout: -5s is negative", 1},
		{"log level", "log: {level: verbose}\n" + up(""), `log.level: unknown level "verbose"`, 1},
		{"log format", "log: {format: xml}\n" + up(""), `log.format: unknown format "xml"`, 1},
		{"no upstreams", "listen: :5000\n", "upstreams: at least one upstream is required", 0},
		{"empty upstreams", "upstreams: []\n", "upstreams: at least one upstream is required", 1},
		{"name missing", "upstreams:\n  - url: https://a.example\n", "upstreams[0].name: required", 2},
		{"name v2", "upstreams:\n  - name: v2\n    url: https://a.example\n", `upstreams[0].name: "v2" is reserved`, 2},
		{"name upper", "upstreams:\n  - name: Hub\n    url: https://a.example\n", `upstreams[0].name: "Hub" is not a single path segment`, 2},
		{"name slash", "upstreams:\n  - name: a/b\n    url: https://a.example\n", `upstreams[0].name: "a/b" is not a single path segment`, 2},
		{"name dots", "upstreams:\n  - name: ..\n    url: https://a.example\n", `upstreams[0].name: ".." is not a single path segment`, 2},
		{"name duplicate", up("  - name: hub\n    url: https://b.example\n"), `upstreams[1].name: "hub" is already the name of upstreams[0]`, 4},
		{"url missing", "upstreams:\n  - name: a\n", "upstreams[0].url: required", 2},
		{"url scheme", up("  - name: b\n    url: ftp://b.example\n"), "upstreams[1].url: scheme must be http or https", 5},
		{"url no scheme", up("  - name: b\n    url: b.example\n"), "upstreams[1].url: scheme must be http or https", 5},
		{"url no host", up("  - name: b\n    url: https://\n"), `upstreams[1].url: "https://" has no host`, 5},
		{"url userinfo", up("  - name: b\n    url: https://u:p@b.example\n"), "upstreams[1].url: credentials in the URL are not allowed", 5},
		{"url v2", up("  - name: b\n    url: https://b.example/v2/\n"), `upstreams[1].url: "https://b.example/v2" ends in /v2`, 5},
		{"url query", up("  - name: b\n    url: https://b.example?x=1\n"), `upstreams[1].url: "https://b.example?x=1" has a query or fragment`, 5},
		// Serve's upstream client takes no path (the API is at /v2/), so
		// check must refuse one too; and a port past 65535 fails every dial.
		{"url path", up("  - name: b\n    url: https://b.example/mirror/\n"), `upstreams[1].url: "https://b.example/mirror" has a path; give only the scheme, host and port, as in https://b.example`, 5},
		{"url port range", up("  - name: b\n    url: https://b.example:99999\n"), `upstreams[1].url: port "99999" is not a number from 1 to 65535`, 5},
		{"url port zero", up("  - name: b\n    url: https://b.example:0\n"), `upstreams[1].url: port "0" is not a number from 1 to 65535`, 5},
		{"retry attempts too many", up("    retry: {maxAttempts: 1000000000}\n"), "upstreams[0].retry.maxAttempts: 1000000000 is more than 100", 4},
		{"url bad", up("  - name: b\n    url: \"https://b.example:port\"\n"), `upstreams[1].url: "https://b.example:port" does not parse`, 5},
		{"two defaults", up("    default: true\n  - name: b\n    url: https://b.example\n    default: true\n"), "upstreams[1].default: only one upstream may be the default", 7},
		{"alias duplicate", up("    aliases: [docker.io]\n  - name: b\n    url: https://b.example\n    aliases: [Docker.IO]\n"), `upstreams[1].aliases[0]: "docker.io" is already an alias of upstreams[0]`, 7},
		{"alias is a name", up("  - name: b\n    url: https://b.example\n    aliases: [hub]\n"), `upstreams[1].aliases[0]: "hub" is the name of upstreams[0]`, 6},
		{"alias is a host", up("  - name: b\n    url: https://b.example\n    aliases: [hub.example]\n"), `upstreams[0].url: host "hub.example" is an alias of upstreams[1]`, 3},
		{"two upstreams one host", up("  - name: b\n    url: https://HUB.example/\n"), `upstreams[1].url: host "hub.example" is already the host of upstreams[0]`, 5},
		{"alias not host", up("    aliases: [\"https://docker.io\"]\n"), `upstreams[0].aliases[0]: "https://docker.io" is not a registry host`, 4},
		{"redirect host scheme", up("    internalRedirectHosts: [ok.example, \"https://cdn.example\"]\n"), `upstreams[0].internalRedirectHosts[1]: "https://cdn.example" is not a host name or IP address`, 4},
		{"redirect host port", up("    internalRedirectHosts: [\"cdn.example:443\"]\n"), `upstreams[0].internalRedirectHosts[0]: "cdn.example:443" is not a host name`, 4},
		{"redirect host empty", up("    internalRedirectHosts: [\"\"]\n"), `upstreams[0].internalRedirectHosts[0]: "" is not a host name`, 4},
		{"redirect host wildcard", up("    internalRedirectHosts: [\"*.example\"]\n"), `upstreams[0].internalRedirectHosts[0]: "*.example" is not a host name`, 4},
		{"repositories empty", up("    repositories: []\n"), "upstreams[0].repositories: an empty list allows nothing", 4},
		{"glob bad", up("    repositories: [ok/*, \"lib/[a\"]\n"), "upstreams[0].repositories[1]: malformed glob", 4},
		{"glob inner **", up("    repositories: [\"a/**/b\"]\n"), `upstreams[0].repositories[0]: "**" is allowed only as the whole last segment`, 4},
		{"glob slash", up("    repositories: [\"/library/*\"]\n"), "upstreams[0].repositories[0]: a pattern must not start or end with '/'", 4},
		{"glob empty", up("    repositories: [\"\"]\n"), "upstreams[0].repositories[0]: empty pattern", 4},
		{"auth files half", up("    auth: {usernameFile: /u}\n"), "upstreams[0].auth: usernameFile and passwordFile must be set together", 4},
		{"auth env half", up("    auth:\n      passwordEnv: P\n"), "upstreams[0].auth: usernameEnv and passwordEnv must be set together", 4},
		{"upstream tagTTL", up("    tagTTL: -1m\n"), "upstreams[0].tagTTL: -1m0s is negative", 4},
		{"header timeout", up("    timeouts: {header: -1s}\n"), "upstreams[0].timeouts.header: -1s is negative", 4},
		{"idle timeout", up("    timeouts:\n      idle: -1s\n"), "upstreams[0].timeouts.idle: -1s is negative", 5},
		{"retry attempts", up("    retry: {maxAttempts: -2}\n"), "upstreams[0].retry.maxAttempts: -2 is too small", 4},
		{"retry delays", up("    retry: {baseDelay: 20s, maxDelay: 1s}\n"), "upstreams[0].retry: baseDelay 20s exceeds maxDelay 1s", 4},
		{"retry negative", up("    retry: {baseDelay: -1s}\n"), "upstreams[0].retry.baseDelay: -1s is negative", 4},
		{"blob transfers negative", up("    maxBlobTransfers: -1\n"), "upstreams[0].maxBlobTransfers: -1 is negative", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("airlock.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse accepted:\n%s", tc.yaml)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			want := tc.want
			if tc.line > 0 {
				want = fmt.Sprintf("airlock.yaml:%d: %s", tc.line, tc.want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error:\n%v\nwant a line containing:\n%s", err, want)
			}
		})
	}
}

// TestValidateReportsAll checks that problems are collected, not returned
// one at a time, and that Validate works on a Config changed in code.
func TestValidateReportsAll(t *testing.T) {
	t.Parallel()
	c := Default()
	c.Listen = "nope"
	c.Log.Level = "loud"
	c.Upstreams[1].URL = "gopher://gcr.io"
	c.Upstreams[2].Default = true
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted a broken config")
	}
	for _, key := range []string{"listen:", "log.level:", "upstreams[1].url:", "upstreams[2].default:"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 4 {
		t.Errorf("got %d problems, want 4:\n%v", n, err)
	}
}

func TestValidateHandBuilt(t *testing.T) {
	t.Parallel()
	c := &Config{Upstreams: []Upstream{{Name: "local", URL: "http://127.0.0.1:5999"}}}
	if err := c.Validate(); err == nil {
		t.Error("Validate accepted a Config without defaults (no storage path, no listen)")
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		t.Errorf("after ApplyDefaults: %v", err)
	}
	before := fmt.Sprintf("%+v", *c)
	c.ApplyDefaults()
	if after := fmt.Sprintf("%+v", *c); after != before {
		t.Errorf("ApplyDefaults is not idempotent:\n%s\n%s", before, after)
	}
}

func TestInternalRedirectHostsAccepted(t *testing.T) {
	t.Parallel()
	c, err := Parse("hosts.yaml", []byte("upstreams:\n  - name: hub\n    url: https://hub.example\n    internalRedirectHosts: [cdn.internal.example, CDN_2.corp, 10.0.0.7, \"fd00::7\", \"[fd00::8]\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Upstreams[0].InternalRedirectHosts; len(got) != 5 || got[0] != "cdn.internal.example" {
		t.Errorf("internalRedirectHosts = %q", got)
	}
}
