package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAdminParseTokens(t *testing.T) {
	t.Parallel()
	sum := sha256.Sum256([]byte("s3cr3t-unnamed"))
	unnamed := "admin:token-" + hex.EncodeToString(sum[:4])
	tests := []struct {
		name    string
		file    string
		want    map[string]string // token -> actor
		wantErr string
	}{
		{name: "named and unnamed", file: "# admins\n\nalice:tok-alice\n  bob : tok-bob  \ns3cr3t-unnamed\n",
			want: map[string]string{"tok-alice": "admin:alice", "tok-bob": "admin:bob", "s3cr3t-unnamed": unnamed}},
		{name: "token holding a colon after the name", file: "ci:abc:def\n", want: map[string]string{"abc:def": "admin:ci"}},
		{name: "crlf", file: "alice:tok\r\n", want: map[string]string{"tok": "admin:alice"}},
		{name: "empty", file: "\n# nothing yet\n", want: map[string]string{}},
		{name: "no token after name", file: "alice:\n", wantErr: "line 1: no token"},
		{name: "bad name", file: "ok:Zq1\nal ice:Zq2\n", wantErr: "line 2: the name"},
		{name: "space in token", file: "alice:Zq3 Zq4\n", wantErr: "line 1: a token cannot contain spaces"},
		{name: "duplicate name", file: "alice:Zq5\nalice:Zq6\n", wantErr: `line 2: the name "alice" is already used on line 1`},
		{name: "duplicate token", file: "alice:Zq7\nbob:Zq7\n", wantErr: "line 2: the same token is on line 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			entries, err := parseTokens([]byte(tc.file))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseTokens = %v; want error containing %q", err, tc.wantErr)
				}
				// Errors go to the log and to clients: never a token.
				if strings.Contains(err.Error(), "Zq") {
					t.Fatalf("error %q repeats a token", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != len(tc.want) {
				t.Fatalf("got %d tokens; want %d", len(entries), len(tc.want))
			}
			for token, actor := range tc.want {
				if got, ok := match(entries, token); !ok || got != actor {
					t.Errorf("match(%q) = %q, %v; want %q", token, got, ok, actor)
				}
			}
			if _, ok := match(entries, "not-a-token"); ok {
				t.Error("an unknown token matched")
			}
			if _, ok := match(entries, ""); ok {
				t.Error("the empty token matched")
			}
		})
	}
}

func TestAdminBearer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		header, token string
		ok            bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER  abc ", "abc", true},
		{"Basic YWxpY2U6eA==", "", false},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"", "", false},
		{"abc", "", false},
	}
	for _, tc := range tests {
		if token, ok := bearer(tc.header); token != tc.token || ok != tc.ok {
			t.Errorf("bearer(%q) = %q, %v; want %q, %v", tc.header, token, ok, tc.token, tc.ok)
		}
	}
}

// TestTokenFileReload shows that a changed file is picked up on the next
// request: a revoked token stops working without a restart, and a file that
// becomes unreadable or malformed refuses everyone rather than keeping old
// tokens.
func TestAdminTokenFileReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	write := func(body string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		// Set the time explicitly: two writes within the file system's
		// timestamp granularity must still be told apart by size or time.
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	s := &Server{tokens: NewTokens(path), throttle: NewThrottle(nil, nil)}
	auth := func(token string) (string, Code) {
		r := httptest.NewRequest(http.MethodGet, Prefix+"images", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		actor, err := s.authenticate(r)
		if err != nil {
			e, _ := asAPIError(err)
			if strings.Contains(e.Message, token) {
				t.Fatalf("message %q repeats the token", e.Message)
			}
			return "", e.Code
		}
		return actor, ""
	}
	t0 := time.Now().Add(-time.Hour)
	write("alice:tok-alice\nbob:tok-bob\n", t0)
	if actor, code := auth("tok-alice"); actor != "admin:alice" {
		t.Fatalf("alice: actor %q, code %s", actor, code)
	}
	if actor, code := auth("tok-bob"); actor != "admin:bob" {
		t.Fatalf("bob: actor %q, code %s", actor, code)
	}

	// Revoke bob, renaming alice's token in the same length of file.
	write("alice:tok-alic2\n", t0.Add(time.Second))
	if _, code := auth("tok-bob"); code != CodeUnauthorized {
		t.Fatalf("revoked token: code %s; want %s", code, CodeUnauthorized)
	}
	if _, code := auth("tok-alice"); code != CodeUnauthorized {
		t.Fatalf("replaced token: code %s; want %s", code, CodeUnauthorized)
	}
	if actor, _ := auth("tok-alic2"); actor != "admin:alice" {
		t.Fatalf("new token: actor %q", actor)
	}

	write("alice:\n", t0.Add(2*time.Second))
	if _, code := auth("tok-alic2"); code != CodeUnavailable {
		t.Fatalf("malformed file: code %s; want %s", code, CodeUnavailable)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, code := auth("tok-alic2"); code != CodeUnavailable {
		t.Fatalf("missing file: code %s; want %s", code, CodeUnavailable)
	}
	write("# empty\n", t0.Add(3*time.Second))
	if _, code := auth("tok-alic2"); code != CodeUnauthorized {
		t.Fatalf("empty file: code %s; want %s", code, CodeUnauthorized)
	}
	write("carol:tok-carol\n", t0.Add(4*time.Second))
	if actor, _ := auth("tok-carol"); actor != "admin:carol" {
		t.Fatalf("after repair: actor %q", actor)
	}
}

// TestCredentialRecheck: a credential outlives neither its token's removal
// nor a change of the name it is filed under, and Describe gives the
// sentence to show without the token.
func TestCredentialRecheck(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens")
	write := func(body string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	write("alice:tok-alice\nbob:tok-bob\n", t0)
	tokens := NewTokens(path)
	c, err := tokens.Check("tok-alice")
	if err != nil || c.Actor != "admin:alice" {
		t.Fatalf("Check(tok-alice) = %+v, %v", c, err)
	}
	if err := tokens.Recheck(c); err != nil {
		t.Fatalf("Recheck right after Check: %v", err)
	}
	if _, err := tokens.Check("tok-mallory"); err == nil {
		t.Fatal("Check accepted a token the file does not hold")
	} else if status, msg := Describe(err); status != 401 || strings.Contains(msg, "tok-") {
		t.Fatalf("Describe = %d %q; want 401 without a token", status, msg)
	}
	write("carol:tok-alice\nbob:tok-bob\n", t0.Add(time.Minute))
	if err := tokens.Recheck(c); err == nil {
		t.Fatal("Recheck accepted a token now filed under another name")
	}
	write("bob:tok-bob\n", t0.Add(2*time.Minute))
	if err := tokens.Recheck(c); err == nil {
		t.Fatal("Recheck accepted a removed token")
	}
	if _, err := NewTokens("").Check("tok-bob"); err == nil {
		t.Fatal("Check accepted a token with no token file")
	}
}
