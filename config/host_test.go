package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	t.Parallel()
	if c, err := Open("", ScopeDocument); err != nil || len(c.Upstreams) != 3 {
		t.Errorf("Open(\"\") = %v, %v; want the embedded default", c, err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "absent.yaml"), ScopeHost); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of a missing file: %v, want fs.ErrNotExist", err)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "airlock.yaml")
	secret := filepath.Join(dir, "absent-secret")
	if err := os.WriteFile(path, []byte(`
storage: {path: "`+filepath.Join(dir, "data")+`"}
admin: {tokenFile: "`+secret+`"}
upstreams:
  - {name: hub, url: "https://hub.example"}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, ScopeDocument); err != nil {
		t.Errorf("ScopeDocument looked at the machine: %v", err)
	}
	_, err := Open(path, ScopeHost)
	want := path + ":3: admin.tokenFile: " + secret + " does not exist"
	if !errors.Is(err, ErrInvalid) || err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("ScopeHost error = %v, want %s... wrapping ErrInvalid", err, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("checking storage.path created it (%v)", err)
	}
}

func TestWritableDirLeavesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var p problems
	p.writableDir("storage.path", dir)
	p.writableDir("storage.path", filepath.Join(dir, "not", "yet"))
	if len(p) != 0 {
		t.Fatalf("writable directories reported: %v", p)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the write check left %v behind", entries)
	}
}
