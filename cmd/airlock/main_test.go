package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	valid := write("valid.yaml", `
listen: "127.0.0.1:5000"
storage: {path: /var/lib/airlock}
upstreams:
  - {name: dockerhub, url: "https://registry-1.docker.io", aliases: [docker.io], default: true}
`)
	tests := []struct {
		name    string
		args    []string
		wantOut string
		wantErr []string // substrings of the error; nil means success
	}{
		{"embedded default", []string{"config", "check"}, "embedded default: valid (3 upstreams)", nil},
		{"valid file", []string{"config", "check", "--config", valid}, "valid.yaml: valid (1 upstreams)", nil},
		{"example file", []string{"config", "check", "--config", "../../configs/airlock.example.yaml"}, "valid", nil},
		{"unknown key", []string{"config", "check", "--config", write("typo.yaml", "listen: ':5000'\nupstream: []\n")},
			"", []string{"typo.yaml:2", `unknown key "upstream"`}},
		{"bad url", []string{"config", "check", "--config", write("url.yaml", "upstreams:\n  - {name: a, url: 'ftp://x'}\n")},
			"", []string{"upstreams[0].url"}},
		{"missing file", []string{"config", "check", "--config", filepath.Join(dir, "absent.yaml")}, "", []string{"absent.yaml"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := newRootCommand()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(tc.args)
			err := cmd.ExecuteContext(t.Context())
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if !strings.Contains(out.String(), tc.wantOut) {
					t.Fatalf("output %q does not contain %q", out.String(), tc.wantOut)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted an invalid configuration; output %q", out.String())
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
		})
	}
}

func TestServeRefusesBadConfig(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(p, []byte("upstreams:\n  - {name: a, url: 'https://a.example', default: true}\n  - {name: b, url: 'https://b.example', default: true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newRootCommand()
	cmd.SetArgs([]string{"serve", "--config", p})
	err := cmd.ExecuteContext(t.Context())
	if err == nil || !strings.Contains(err.Error(), "default") {
		t.Fatalf("serve with two default upstreams: %v", err)
	}
}
