package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// aliasBomb is a "billion laughs" in merge keys: each level merges the one
// before ten times, so walking it naively visits 10^levels mappings while
// the document stays a few hundred bytes.
func aliasBomb(levels int) string {
	var b strings.Builder
	b.WriteString("upstreams:\n- <<: [&l0 {name: x}]\n  url: https://a.example\n")
	for i := 1; i < levels; i++ {
		refs := strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d,", i-1), 10), ",")
		fmt.Fprintf(&b, "- <<: [&l%d {<<: [%s]}]\n  url: https://b%d.example\n", i, refs, i)
	}
	return b.String()
}

// aliasFan references one long list from many places: linear in the
// document's size, quadratic in what a naive walk visits.
func aliasFan(items, refs int) string {
	var b strings.Builder
	b.WriteString("upstreams:\n- name: a\n  url: https://a.example\n  aliases: &r [")
	for i := range items {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, "h%d.example", i)
	}
	b.WriteString("]\nauth:\n  htpasswd: /h\n  upstreams:\n")
	for i := range refs {
		fmt.Fprintf(&b, "    u%d: *r\n", i)
	}
	return b.String()
}

// TestAliasExpansionBounded: a configuration that expands through anchors
// and aliases is refused quickly, with an error that says why, by check,
// serve and SIGHUP alike (they share Parse), instead of hanging them.
func TestAliasExpansionBounded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, yaml string }{
		{"merge bomb", aliasBomb(10)},
		{"fan-out", aliasFan(2000, 2000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			done := make(chan error, 1)
			go func() { _, err := Parse("airlock.yaml", []byte(tc.yaml)); done <- err }()
			select {
			case err := <-done:
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "aliases") {
					t.Fatalf("Parse = %v, want an ErrInvalid naming aliases", err)
				}
			case <-time.After(2 * time.Minute):
				t.Fatal("Parse still running after 2 minutes: it hangs")
			}
		})
	}
}

// TestAliasesStillWork: ordinary use of anchors, merges included, is within
// the bound.
func TestAliasesStillWork(t *testing.T) {
	t.Parallel()
	const doc = "upstreams:\n" +
		"- &hub {name: hub, url: https://hub.example, aliases: &al [docker.io, index.docker.io]}\n" +
		"- <<: *hub\n  name: other\n  url: https://other.example\n  aliases: [quay.io]\n"
	c, err := Parse("airlock.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Upstreams) != 2 || c.Upstreams[1].Name != "other" {
		t.Fatalf("upstreams = %+v", c.Upstreams)
	}
}

// TestFilesReadBounded: a configuration, TLS or CA path that names a
// device or a huge file is an error at once, for check and serve alike,
// not a read that takes all memory.
func TestFilesReadBounded(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/dev/zero"); err != nil {
		t.Skip("no /dev/zero")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "airlock.yaml")
	doc := fmt.Sprintf("listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nstorage: {path: %s}\n"+
		"upstreams:\n- {name: hub, url: https://hub.example, caFile: /dev/zero}\n", filepath.Join(dir, "data"))
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"config is a device", "/dev/zero", "larger than 8 MiB"},
		{"caFile is a device", cfg, "upstreams[0].caFile: /dev/zero: file too large: larger than 16 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { _, err := Open(tc.path, ScopeHost); done <- err }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Open = %v, want %q", err, tc.want)
				}
			case <-time.After(2 * time.Minute):
				t.Fatal("Open still reading after 2 minutes: it reads without end")
			}
		})
	}
}

// TestManyDecodeErrorsBounded: a file of tens of thousands of mistyped
// values (1.7 MB) took ten minutes to check, as each error was located by
// a look at every key. The first ones are reported, and how many more.
func TestManyDecodeErrorsBounded(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("upstreams:\n")
	const n = 10_000
	for i := range n {
		fmt.Fprintf(&b, "- {name: a%d, url: \"https://a%d.example\", default: x}\n", i, i)
	}
	done := make(chan error, 1)
	go func() { _, err := Parse("airlock.yaml", []byte(b.String())); done <- err }()
	select {
	case err := <-done:
		msg := fmt.Sprint(err)
		if !strings.Contains(msg, `airlock.yaml:2: upstreams[0].default: want true or false, got "x"`) ||
			!strings.Contains(msg, fmt.Sprintf("%d more values of the wrong type", n-maxDecodeErrors)) {
			t.Fatalf("Parse = %.500s..., want the first errors located and the rest counted", msg)
		}
		if got := strings.Count(msg, "want true or false"); got != maxDecodeErrors {
			t.Errorf("%d errors located, want %d", got, maxDecodeErrors)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Parse still running after 2 minutes: it hangs")
	}
}

// TestManyMisspeltKeysBounded: every one of many misspelt keys is reported
// once, and the name each left out is not reported again. (Forty thousand
// took a minute to check when every problem was compared with every
// misspelling; the watchdog only catches a hang, speed is not asserted.)
func TestManyMisspeltKeysBounded(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("upstreams:\n")
	const n = 5_000
	for i := range n {
		fmt.Fprintf(&b, "- {nam: a%d, url: \"https://a%d.example\"}\n", i, i)
	}
	done := make(chan error, 1)
	go func() { _, err := Parse("airlock.yaml", []byte(b.String())); done <- err }()
	select {
	case err := <-done:
		msg := fmt.Sprint(err)
		if got := strings.Count(msg, `unknown key "nam"`); got != n {
			t.Errorf("%d misspellings reported, want %d", got, n)
		}
		// The name each misspelling left out is not reported again.
		if strings.Contains(msg, "name: required") {
			t.Errorf("a misspelt name is also reported as missing")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Parse still running after 2 minutes: it hangs")
	}
}
