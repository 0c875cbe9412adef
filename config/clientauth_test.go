package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

// writeHtpasswd writes an htpasswd file of bcrypt hashes for users, as
// `htpasswd -B` would, and returns its path.
func writeHtpasswd(t *testing.T, users ...string) string {
	t.Helper()
	var b strings.Builder
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:$2y$%s\n", u, strings.TrimPrefix(string(h), "$2a$"))
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestClientAuth(t *testing.T) {
	t.Parallel()
	path := writeHtpasswd(t, "alice", "ci-bot")
	c, err := Parse("airlock.yaml", []byte(validBase+fmt.Sprintf(`auth:
  htpasswd: %s
  realm: my registry
  upstreams:
    quay: [alice, ci-bot]
`, path)))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Auth.Enabled() || c.Auth.Realm != "my registry" || strings.Join(c.Auth.Upstreams["quay"], ",") != "alice,ci-bot" {
		t.Fatalf("auth = %+v", c.Auth)
	}
	if Default().Auth.Enabled() {
		t.Error("the embedded default asks for credentials; it must run with no extra files")
	}
}

func TestClientAuthErrors(t *testing.T) {
	t.Parallel()
	good := writeHtpasswd(t, "alice", "bob")
	for _, tc := range []struct {
		name, yaml string
		want       string
		line       int
	}{
		{"upstreams without htpasswd", "auth:\n  upstreams: {hub: [alice]}\n", "auth.htpasswd: required when auth.realm or auth.upstreams is set", 10},
		{"realm without htpasswd", "auth: {realm: x}\n", "auth.htpasswd: required", 10},
		{"realm quote", "auth:\n  htpasswd: " + good + "\n  realm: 'a\"b'\n", "auth.realm: realm", 12},
		{"unknown upstream", "auth:\n  htpasswd: " + good + "\n  upstreams:\n    vendor: [alice]\n", `auth.upstreams.vendor: "vendor" is not the name of an upstream; use one of hub, quay`, 13},
		{"empty list", "auth:\n  htpasswd: " + good + "\n  upstreams:\n    hub: []\n", "auth.upstreams.hub: an empty list allows no user", 13},
		{"unknown key", "auth:\n  htpasswd: " + good + "\n  users: [alice]\n", `unknown key "users" in auth`, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("airlock.yaml", []byte(validBase+tc.yaml))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if want := fmt.Sprintf("airlock.yaml:%d: %s", tc.line, tc.want); !strings.Contains(err.Error(), want) {
				t.Errorf("error:\n%v\nwant a line containing:\n%s", err, want)
			}
		})
	}
}

// TestClientAuthLoadUsers covers what serve checks at start and on SIGHUP:
// the file the section names, as it is on this machine.
func TestClientAuthLoadUsers(t *testing.T) {
	t.Parallel()
	good := writeHtpasswd(t, "alice", "bob")
	empty := writeHtpasswd(t)
	md5 := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(md5, []byte("# users\nbob:$apr1$abcdefgh$0123456789abcdefghijkl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "absent")
	for _, tc := range []struct {
		name string
		auth ClientAuth
		want []string // "" for success
	}{
		{"off", ClientAuth{}, nil},
		{"good", ClientAuth{Htpasswd: good, Upstreams: map[string][]string{"hub": {"bob"}}}, nil},
		{"missing file", ClientAuth{Htpasswd: missing}, []string{"auth.htpasswd: " + missing + ": no such file or directory", "Secret"}},
		{"md5 line", ClientAuth{Htpasswd: md5}, []string{"auth.htpasswd: " + md5 + `:2: invalid htpasswd file: user "bob": the password hash is Apache MD5 ($apr1$), not bcrypt`, "htpasswd -B"}},
		{"no users", ClientAuth{Htpasswd: empty}, []string{"auth.htpasswd: " + empty + " holds no users"}},
		{"unknown user", ClientAuth{Htpasswd: good, Upstreams: map[string][]string{"hub": {"alice", "alcie"}}},
			[]string{`auth.upstreams.hub[1]: user "alcie" is not in ` + good}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			users, err := tc.auth.LoadUsers()
			if tc.want == nil {
				if err != nil || (users != nil) != tc.auth.Enabled() {
					t.Fatalf("LoadUsers = %v, %v", users, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain:\n%s", err, w)
				}
			}
		})
	}
}

// TestClientAuthOpen: config check, serve and SIGHUP (config.Open with
// ScopeHost) read the htpasswd file and name the bad line; the document
// scope, for CI without the Secret, does not.
func TestClientAuthOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "airlock.yaml")
	doc := fmt.Sprintf("storage: {path: %s}\nauth:\n  htpasswd: %s\nupstreams:\n  - {name: hub, url: https://hub.example}\n",
		filepath.Join(dir, "data"), htpasswd)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, ScopeDocument); err != nil {
		t.Fatalf("document scope: %v", err)
	}
	_, err := Open(path, ScopeHost)
	want := fmt.Sprintf("%s:3: auth.htpasswd: %s:1: invalid htpasswd file: user \"alice\": the password hash is SHA-1", path, htpasswd)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
		t.Fatalf("host scope: %v\nwant it to contain:\n%s", err, want)
	}
}
