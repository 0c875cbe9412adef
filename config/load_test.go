package config

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	const ok = "upstreams:\n  - name: hub\n    url: https://hub.example\n"
	for _, tc := range []struct {
		name string
		yaml string
		want []string // each must appear in the error, whole
	}{
		{"top-level typo", "listen: :5000\nupstream: []\n" + ok,
			[]string{`airlock.yaml:2: unknown key "upstream" (did you mean "upstreams"?)`}},
		{"case typo", "cache:\n  tagTtl: 1m\n" + ok,
			[]string{`airlock.yaml:2: unknown key "tagTtl" in cache (did you mean "tagTTL"?)`}},
		{"unrelated key lists known keys", "colour: blue\n" + ok,
			[]string{`airlock.yaml:1: unknown key "colour"; known keys are admin, alerts, auth, cache, cluster, listen, log, metadata, policies, scanner, shutdown, storage, tls, tracing, upstreams`}},
		{"key in upstream item", ok + "    mirror: true\n",
			[]string{`airlock.yaml:4: unknown key "mirror" in upstreams[0]; known keys are`}},
		{"key in nested struct", ok + "    auth:\n      usernamefile: /u\n      token: x\n",
			[]string{
				`airlock.yaml:5: unknown key "usernamefile" in upstreams[0].auth (did you mean "usernameFile"?)`,
				`airlock.yaml:6: unknown key "token" in upstreams[0].auth; known keys are passwordEnv, passwordFile, usernameEnv, usernameFile`,
			}},
		{"key in flow mapping", ok + "    timeouts: {header: 1s, idel: 2s}\n",
			[]string{`airlock.yaml:4: unknown key "idel" in upstreams[0].timeouts (did you mean "idle"?)`}},
		{"key via merge", "base: &b {url: https://x.example, bogus: 1}\n",
			[]string{`airlock.yaml:1: unknown key "base"`}},
		{"merged mapping checked", "upstreams:\n  - &hub {name: hub, url: https://hub.example}\n  - <<: *hub\n    name: other\n    extra: 1\n",
			[]string{`airlock.yaml:5: unknown key "extra" in upstreams[1]`}},
		{"duration without unit", "shutdown:\n  drainTimeout: 30\n" + ok,
			[]string{`airlock.yaml:2: shutdown.drainTimeout: "30" is not a duration; write a number with a unit`}},
		{"wrong type", "cache:\n  maxManifestBytes: lots\n" + ok,
			[]string{`airlock.yaml:2: cache.maxManifestBytes: want an integer, got "lots"`}},
		{"several type errors", ok + "    default: maybe\n    retry: {maxAttempts: x}\n",
			[]string{
				`airlock.yaml:4: upstreams[0].default: want true or false, got "maybe"`,
				`airlock.yaml:5: upstreams[0].retry.maxAttempts: want an integer, got "x"`,
			}},
		{"mapping where list expected", "upstreams: {name: hub}\n",
			[]string{"airlock.yaml:1: upstreams: want a list, got a mapping"}},
		{"duplicate key", "listen: :5000\nlisten: :5001\n" + ok,
			[]string{`airlock.yaml:2: listen: mapping key "listen" already defined at line 1`}},
		{"syntax", "listen: :5000\n  oops: : x\n",
			[]string{"airlock.yaml:2: mapping values are not allowed in this context; fix the YAML syntax"}},
		{"tab indentation", "upstreams:\n\t- name: hub\n",
			[]string{"airlock.yaml:2: found character that cannot start any token; fix the YAML syntax"}},
		{"second document", ok + "---\nlisten: :5000\n",
			[]string{"airlock.yaml:4: a second YAML document (after ---) is not allowed"}},
		{"not a mapping", "- a\n- b\n",
			[]string{"airlock.yaml:1: the configuration must be a mapping of keys such as listen and upstreams, got a list"}},
		// The decoder cuts values at ten bytes; the message shows them whole.
		{"long value", ok + "    maxBlobTransfers: lotsandlotsoftransfers\n",
			[]string{`airlock.yaml:4: upstreams[0].maxBlobTransfers: want an integer, got "lotsandlotsoftransfers"`}},
		// Two keys on one line: the value and the wanted type tell them apart.
		{"type error in flow mapping", ok + "    timeouts: {header: 1s, idle: [2s]}\n    retry: {maxAttempts: 2, baseDelay: 1s, maxDelay: many}\n",
			[]string{
				`airlock.yaml:4: upstreams[0].timeouts.idle: want a duration such as "30s" or "5m", got a list`,
				`airlock.yaml:5: upstreams[0].retry.maxDelay: "many" is not a duration`,
			}},
		{"list where string expected", ok + "    aliases: [{host: docker.io}]\n",
			[]string{"airlock.yaml:4: upstreams[0].aliases[0]: want a string, got a mapping"}},
		{"float where bool expected", "tracing: {insecure: 0.5}\n" + ok,
			[]string{"airlock.yaml:1: tracing.insecure: want true or false, got 0.5"}},
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
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error:\n%v\nwant it to contain:\n%s", err, want)
				}
			}
		})
	}
}

// TestParseReportsEveryProblem checks that an unknown key, a value of the
// wrong type and an invalid value are reported together: fixing a file
// must not take one run per mistake.
func TestParseReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := Parse("airlock.yaml", []byte(`listen: ":5000"
colour: blue
log: {level: loud}
upstreams:
  - name: hub
    url: https://hub.example
    maxBlobTransfers: lots
  - name: b
    url: [https://b.example]
`))
	if err == nil {
		t.Fatal("Parse accepted a file with four problems")
	}
	want := []string{
		`airlock.yaml:2: unknown key "colour"`,
		`airlock.yaml:3: log.level: unknown level "loud"`,
		`airlock.yaml:7: upstreams[0].maxBlobTransfers: want an integer, got "lots"`,
		`airlock.yaml:9: upstreams[1].url: want a string, got a list`,
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d (a mistyped url must not also be reported as missing):\n%v", len(got), len(want), err)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want it to start with %q", i, got[i], want[i])
		}
	}
}

// TestMisspeltKeyNotAlsoMissing checks that the key a typo was meant to be
// is not reported again as absent.
func TestMisspeltKeyNotAlsoMissing(t *testing.T) {
	t.Parallel()
	_, err := Parse("airlock.yaml", []byte("upstream:\n  - {name: hub, url: https://hub.example}\n"))
	if err == nil || strings.Contains(err.Error(), "at least one upstream is required") ||
		!strings.Contains(err.Error(), `unknown key "upstream" (did you mean "upstreams"?)`) {
		t.Errorf("error = %v; want only the unknown key", err)
	}
}

// TestDuplicateKeyNotAlsoMissing: the decoder skips a mapping with a
// duplicate key, and what it skipped must not be reported as missing.
func TestDuplicateKeyNotAlsoMissing(t *testing.T) {
	t.Parallel()
	_, err := Parse("airlock.yaml", []byte("listen: :5000\nlisten: :5001\nupstreams:\n  - {name: hub, url: https://hub.example}\n"))
	if err == nil || strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), `airlock.yaml:2: listen: mapping key "listen" already defined at line 1`) {
		t.Errorf("error = %v; want only the duplicate key", err)
	}
}

func TestPolicies(t *testing.T) {
	t.Parallel()
	const up = "upstreams: [{name: hub, url: \"https://hub.example\"}]\n"
	for _, tc := range []struct {
		name, yaml string
		errs       []string
	}{
		{"valid, mode defaults to enforce", "policies: [{name: pinned, match: [\"hub/*\"], pins: /p.txt}]", nil},
		{"audit mode", "policies: [{name: pinned, match: [\"hub/*\"], mode: audit, pins: /p.txt}]", nil},
		{"missing name and match", "policies: [{pins: /p.txt}]", []string{"policies[0].name: required", "policies[0].match: required"}},
		{"duplicate name", "policies: [{name: a, match: [hub/x], pins: /p}, {name: a, match: [hub/y], pins: /p}]", []string{"policies[1].name: \"a\" is used by another policy"}},
		{"bad mode", "policies: [{name: a, match: [hub/x], pins: /p, mode: warn}]", []string{"policies[0].mode: unknown mode \"warn\""}},
		{"glob with a tag", "policies: [{name: a, match: [\"hub/x:1\"], pins: /p}]", []string{"policies[0].match[0]: \"hub/x:1\" contains"}},
		{"no check", "policies: [{name: a, match: [hub/x]}]", []string{"policies[0]: has no check"}},
		{"unknown key", "policies: [{name: a, match: [hub/x], pins: /p, require: [cosign]}]", []string{"unknown key \"require\""}},
		{"webhook", "alerts: {webhooks: [{url: \"http://127.0.0.1:9/hook\", events: [image.quarantined]}]}", nil},
		{"bad webhook", "alerts: {webhooks: [{url: \"ftp://x\"}, {url: \"http://h/\", events: [image.deleted]}]}",
			[]string{"alerts.webhooks[0].url: \"ftp://x\" is not an http or https URL", "alerts.webhooks[1].events[0]: unknown event \"image.deleted\""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse("p.yaml", []byte(up+tc.yaml+"\n"))
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range c.Policies {
					if p.Mode != ModeEnforce && p.Mode != ModeAudit {
						t.Errorf("mode = %q after defaults", p.Mode)
					}
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.errs)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q\nlacks %q", err, want)
				}
			}
		})
	}
}

func TestParseEmptyNamesFallback(t *testing.T) {
	t.Parallel()
	_, err := Parse("", []byte("bogus: 1\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "config:1: ") {
		t.Errorf("error = %v, want it to start with config:1:", err)
	}
}

func TestEditDistance(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "", 3}, {"", "ab", 2}, {"upstream", "upstreams", 1},
		{"idel", "idle", 2}, {"kitten", "sitting", 3}, {"same", "same", 0},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
