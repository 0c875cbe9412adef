package console_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/admin/console"
)

// Stubs: requests that are not signed in never reach the store or the
// decider.
type unusedStore struct{ admin.Store }
type unusedDecider struct{ admin.Decider }

// bareConsole is a console with only what sign-in uses, logging at debug
// level to logs.
func bareConsole(t *testing.T, tokenFile string, logs *admintest.LogBuffer) *console.Console {
	t.Helper()
	c, err := console.New(console.Options{Store: unusedStore{}, Decider: unusedDecider{}, TokenFile: tokenFile,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// scriptedSignIn posts the sign-in form the way any script can: it picks its
// own CSRF value and sends it as both the cookie and the field.
func scriptedSignIn(c http.Handler, remote, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", "/ui/login", strings.NewReader(body))
	req.RemoteAddr = remote
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "airlock_console_login", Value: "x"})
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	return rec
}

// TestSignInWithNoUsableTokenFile: with admin.tokenFile unset, empty or
// missing, no sign-in can succeed and none is a guess: from 50 addresses,
// six sign-ins each, the throttle refuses none of them with 429 (each is
// told what is wrong with the configuration), and the log holds one
// warning.
func TestSignInWithNoUsableTokenFile(t *testing.T) {
	t.Parallel()
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("# nobody yet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file string
		status     int
	}{
		{"unset", "", http.StatusUnauthorized},
		{"empty", empty, http.StatusUnauthorized},
		{"missing", filepath.Join(t.TempDir(), "no-such-file"), http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs admintest.LogBuffer
			c := bareConsole(t, tc.file, &logs)
			const addrs = 50
			statuses := map[int]int{}
			body := url.Values{"csrf": {"x"}, "token": {admintest.AliceToken}}.Encode()
			for a := range addrs {
				for range admin.MaxWrongTokens + 1 {
					rec := scriptedSignIn(c, fmt.Sprintf("198.51.100.%d:4000", a+1), body)
					statuses[rec.Code]++
				}
			}
			if n := addrs * (admin.MaxWrongTokens + 1); statuses[tc.status] != n {
				t.Errorf("%d sign-ins from %d addresses: statuses %v, want %d of %d", n, addrs, statuses, n, tc.status)
			}
			if warns := strings.Count(logs.String(), "level=WARN"); warns != 1 {
				t.Errorf("%d warnings, want 1:\n%s", warns, logs.String())
			}
		})
	}
}

// TestBadSignInFormLogsAtDebug: a sign-in post whose body cannot be read
// (a bad %-escape, or over 64 KiB) comes before any CSRF check or
// throttle, and anyone can send it: it is logged at debug level, not at
// info, the default.
func TestBadSignInFormLogsAtDebug(t *testing.T) {
	t.Parallel()
	var logs admintest.LogBuffer
	c := bareConsole(t, "", &logs)
	const n = 200
	for i := range n {
		body := "token=%zz"
		if i%2 == 1 {
			body = "token=" + strings.Repeat("a", 70<<10)
		}
		req := httptest.NewRequest("POST", "/ui/login", strings.NewReader(body))
		req.RemoteAddr = "203.0.113.9:1"
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest {
			t.Fatalf("unreadable sign-in form = %d, want 400", rec.Code)
		}
	}
	if got := strings.Count(logs.String(), `level=DEBUG msg="console request failed"`); got != n {
		t.Fatalf("%d unreadable sign-in posts, %d debug lines, want one each:\n%.2000s", n, got, logs.String())
	}
	if strings.Contains(logs.String(), "level=INFO") || strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("unreadable sign-in posts logged above debug level:\n%.2000s", logs.String())
	}
}

// TestWrongTokensStillWarned: each wrong token (a real guess, five a
// minute per address at most) is a warning, not held back with the
// refusals that no token caused.
func TestWrongTokensStillWarned(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("alice:"+admintest.AliceToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs admintest.LogBuffer
	c := bareConsole(t, file, &logs)
	body := url.Values{"csrf": {"x"}, "token": {"wrong"}}.Encode()
	for range admin.MaxWrongTokens {
		if rec := scriptedSignIn(c, "198.51.100.1:4000", body); rec.Code != http.StatusUnauthorized {
			t.Fatalf("wrong token = %d, want 401", rec.Code)
		}
	}
	if n := strings.Count(logs.String(), `level=WARN msg="console sign-in refused" remote=`); n != admin.MaxWrongTokens {
		t.Fatalf("%d wrong tokens logged %d warnings, want one each:\n%s", admin.MaxWrongTokens, n, logs.String())
	}
}
