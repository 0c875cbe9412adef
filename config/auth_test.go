package config

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCredentialsFromFilesFollowRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a := Auth{UsernameFile: filepath.Join(dir, "username"), PasswordFile: filepath.Join(dir, "password")}
	writeFile(t, a.UsernameFile, "robot\n")
	writeFile(t, a.PasswordFile, "first-secret\r\n")

	user, pass, err := a.Credentials(t.Context())
	if err != nil || user != "robot" || pass != "first-secret" {
		t.Fatalf("Credentials = %q, %q, %v; want robot, first-secret", user, pass, err)
	}

	// Kubernetes rotates a mounted Secret by swapping a symlink; replace the
	// file the same way and expect the new value without reloading config.
	next := filepath.Join(dir, "password.next")
	writeFile(t, next, "second-secret")
	if err := os.Rename(next, a.PasswordFile); err != nil {
		t.Fatal(err)
	}
	_, pass, err = a.Credentials(t.Context())
	if err != nil || pass != "second-secret" {
		t.Fatalf("after rotation: %q, %v; want second-secret", pass, err)
	}
}

func TestCredentialsFilesWinOverEnv(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("AIRLOCK_TEST_USER", "env-user")
	t.Setenv("AIRLOCK_TEST_PASS", "env-pass")
	a := Auth{
		UsernameFile: filepath.Join(dir, "u"), PasswordFile: filepath.Join(dir, "p"),
		UsernameEnv: "AIRLOCK_TEST_USER", PasswordEnv: "AIRLOCK_TEST_PASS",
	}
	writeFile(t, a.UsernameFile, "file-user")
	writeFile(t, a.PasswordFile, "file-pass")
	user, pass, err := a.Credentials(t.Context())
	if err != nil || user != "file-user" || pass != "file-pass" {
		t.Fatalf("Credentials = %q, %q, %v; want the file values", user, pass, err)
	}

	// A configured but missing file is an error, not a quiet fall back to
	// the environment.
	if err := os.Remove(a.PasswordFile); err != nil {
		t.Fatal(err)
	}
	_, _, err = a.Credentials(t.Context())
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing password file: %v, want fs.ErrNotExist", err)
	}
}

func TestCredentialsFromEnv(t *testing.T) {
	t.Setenv("AIRLOCK_TEST_USER", "dev")
	t.Setenv("AIRLOCK_TEST_PASS", "dev-token")
	a := Auth{UsernameEnv: "AIRLOCK_TEST_USER", PasswordEnv: "AIRLOCK_TEST_PASS"}
	user, pass, err := a.Credentials(t.Context())
	if err != nil || user != "dev" || pass != "dev-token" {
		t.Fatalf("Credentials = %q, %q, %v; want dev, dev-token", user, pass, err)
	}
	// Read on each call, like the files.
	t.Setenv("AIRLOCK_TEST_PASS", "rotated")
	if _, pass, _ = a.Credentials(t.Context()); pass != "rotated" {
		t.Errorf("after change: %q, want rotated", pass)
	}
}

func TestCredentialsAnonymous(t *testing.T) {
	t.Parallel()
	var a Auth
	if !a.Anonymous() {
		t.Error("zero Auth is not Anonymous")
	}
	user, pass, err := a.Credentials(t.Context())
	if user != "" || pass != "" || err != nil {
		t.Errorf("Credentials = %q, %q, %v; want empty, nil", user, pass, err)
	}
}

func TestCredentialsErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	writeFile(t, empty, "\n")
	big := filepath.Join(dir, "big")
	writeFile(t, big, strings.Repeat("x", maxSecretBytes+1))
	user := filepath.Join(dir, "user")
	writeFile(t, user, "robot")
	t.Setenv("AIRLOCK_TEST_SET", "secret-value")
	t.Setenv("AIRLOCK_TEST_EMPTY", "")

	canceled, cancel := context.WithCancel(t.Context())
	cancel()

	for _, tc := range []struct {
		name string
		ctx  context.Context
		auth Auth
		want string
	}{
		{"empty file", t.Context(), Auth{UsernameFile: user, PasswordFile: empty}, empty + " is empty"},
		{"oversized file", t.Context(), Auth{UsernameFile: user, PasswordFile: big}, big + " is larger than"},
		{"missing file", t.Context(), Auth{UsernameFile: user, PasswordFile: filepath.Join(dir, "nope")}, "check that the Secret is mounted"},
		{"only one file", t.Context(), Auth{UsernameFile: user}, "usernameFile and passwordFile must be set together"},
		{"env unset", t.Context(), Auth{UsernameEnv: "AIRLOCK_TEST_SET", PasswordEnv: "AIRLOCK_TEST_UNSET_VAR"}, "AIRLOCK_TEST_UNSET_VAR is not set"},
		{"env empty", t.Context(), Auth{UsernameEnv: "AIRLOCK_TEST_EMPTY", PasswordEnv: "AIRLOCK_TEST_SET"}, "AIRLOCK_TEST_EMPTY is not set"},
		{"only one env", t.Context(), Auth{PasswordEnv: "AIRLOCK_TEST_SET"}, "usernameEnv and passwordEnv must be set together"},
		{"canceled", canceled, Auth{UsernameFile: user, PasswordFile: user}, context.Canceled.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, p, err := tc.auth.Credentials(tc.ctx)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
			if u != "" || p != "" {
				t.Errorf("returned credentials with an error: %q, %q", u, p)
			}
			for _, secret := range []string{"robot", "secret-value", "xxxx"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error reveals a credential (%q): %v", secret, err)
				}
			}
		})
	}
}
