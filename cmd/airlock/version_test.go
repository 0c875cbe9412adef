package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

// TestVersion runs `airlock version`, `--version` and `version -o json`:
// all say the same version and commit.
func TestVersion(t *testing.T) {
	t.Parallel()
	info := readBuildInfo()
	run := func(args ...string) string {
		t.Helper()
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(args)
		if err := cmd.ExecuteContext(t.Context()); err != nil {
			t.Fatalf("airlock %s: %v", strings.Join(args, " "), err)
		}
		return out.String()
	}
	want := "airlock " + info.Version + " (commit " + info.CommitLabel() + ", " + runtime.Version() + ")\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if got := run(args...); got != want {
			t.Errorf("airlock %s = %q, want %q", args[0], got, want)
		}
	}
	var got buildInfo
	if err := json.Unmarshal([]byte(run("version", "-o", "json")), &got); err != nil || got != info {
		t.Errorf("version -o json = %+v (%v), want %+v", got, err, info)
	}
}

// TestVersionLinkerOverride sets what -ldflags "-X main.version=... -X
// main.commit=..." sets. Not parallel: it changes those two variables.
func TestVersionLinkerOverride(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3", "0123abcd"
	info := readBuildInfo()
	if info.Version != "v1.2.3" || info.CommitLabel() != "0123abcd" {
		t.Errorf("with linker overrides: %+v", info)
	}
}
