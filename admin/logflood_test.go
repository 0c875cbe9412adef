package admin_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/admin/admintest"
)

// Stubs: requests that are not authenticated never reach the store or
// the decider.
type unusedStore struct{ admin.Store }
type unusedDecider struct{ admin.Decider }

// bareServer is an API with only what authentication uses, logging at
// info level to logs.
func bareServer(t *testing.T, tokenFile string, logs *admintest.LogBuffer, now func() time.Time) *admin.Server {
	t.Helper()
	srv, err := admin.New(admin.Options{Store: unusedStore{}, Decider: unusedDecider{}, TokenFile: tokenFile,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

type discardWriter struct{ h http.Header }

func (r *discardWriter) Header() http.Header         { return r.h }
func (r *discardWriter) WriteHeader(int)             {}
func (r *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestAPINewProblemLoggedAtOnce: a token file whose problem changes
// (missing, then malformed, both 503, then missing again) is warned of at
// once for each new problem, within the minute of the one before.
func TestAPINewProblemLoggedAtOnce(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	var logs admintest.LogBuffer
	clock := &admintest.Clock{}
	srv := bareServer(t, file, &logs, clock.Now)
	do := func() {
		req, _ := http.NewRequest("GET", "/api/v1/images", nil)
		req.RemoteAddr = "192.0.2.1:1"
		srv.ServeHTTP(&discardWriter{h: http.Header{}}, req)
	}
	do() // missing: warned
	for range 3 {
		do()
	}
	clock.Advance(10 * time.Second)
	if err := os.WriteFile(file, []byte("alice:\n"), 0o600); err != nil { // now malformed
		t.Fatal(err)
	}
	do()
	if !strings.Contains(logs.String(), "no token after the name") {
		t.Fatalf("the malformed file was not warned of at once:\n%s", logs.String())
	}
	if err := os.Remove(file); err != nil { // missing again
		t.Fatal(err)
	}
	do()
	if n := strings.Count(logs.String(), "level=WARN"); n != 3 {
		t.Fatalf("%d warnings, want 3, one per problem:\n%s", n, logs.String())
	}
}

// TestAPIGoneWhileWaiting: a request whose client goes away while it
// waits in the throttle for the checks already running from its address
// is answered (to nobody) without a warning: anyone can send them.
func TestAPIGoneWhileWaiting(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("alice:"+admintest.AliceToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs admintest.LogBuffer
	throttle := admin.NewThrottle(nil, nil)
	srv, err := admin.New(admin.Options{Store: unusedStore{}, Decider: unusedDecider{}, TokenFile: file, Throttle: throttle,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	// Five checks from the address, running until released: a sixth
	// could be the one to reach the limit, so it waits for them.
	const addr = "192.0.2.7:1"
	release := make(chan struct{})
	var running, done sync.WaitGroup
	for range admin.MaxWrongTokens {
		running.Add(1)
		done.Go(func() {
			_, _ = throttle.Check(context.Background(), addr, func() bool {
				running.Done()
				<-release
				return false
			})
		})
	}
	running.Wait()
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, "GET", "/api/v1/images", nil)
		req.RemoteAddr = addr
		req.Header.Set("Authorization", "Bearer wrong")
		rec := &statusWriter{discardWriter: discardWriter{h: http.Header{}}}
		srv.ServeHTTP(rec, req)
		cancel()
		if rec.status != http.StatusServiceUnavailable {
			t.Fatalf("a request that went away while waiting = %d, want 503", rec.status)
		}
	}
	close(release)
	done.Wait()
	if strings.Contains(logs.String(), "level=") {
		t.Fatalf("requests that went away while waiting were logged at info level or above:\n%.3000s", logs.String())
	}
}

type statusWriter struct {
	discardWriter
	status int
}

func (w *statusWriter) WriteHeader(s int) { w.status = s }

// TestLogEveryHeldResets: the count a line reports is of the lines held
// back since the previous line let through, a kind is let through again
// one interval later, a new what at once, and kinds do not hold each
// other back.
func TestLogEveryHeldResets(t *testing.T) {
	t.Parallel()
	clock := &admintest.Clock{}
	l := admin.NewLogEvery(time.Minute, clock.Now)
	want := func(ok bool, held int) {
		t.Helper()
		if gotOK, gotHeld := l.Allow("k", "same"); gotOK != ok || gotHeld != held {
			t.Fatalf("Allow = %v, %d; want %v, %d", gotOK, gotHeld, ok, held)
		}
	}
	want(true, 0)
	for range 3 {
		want(false, 0)
	}
	clock.Advance(time.Minute)
	want(true, 3)
	want(false, 0)
	want(false, 0)
	clock.Advance(time.Minute)
	want(true, 2)
	if ok, _ := l.Allow("other", "same"); !ok {
		t.Fatal("another kind is held back by the first")
	}
	want(false, 0)
	if ok, held := l.Allow("k", "new"); !ok || held != 1 {
		t.Fatalf("a new what = %v, %d; want let through, counting 1 held back", ok, held)
	}
	if ok, _ := l.Allow("k", "new"); ok {
		t.Fatal("the new what was let through twice within the interval")
	}
}

// TestAPIUnusableConcurrent: refusals while admin.tokenFile is unset,
// sent at once from many addresses with and without tokens, still give one
// warning (run with -race).
func TestAPIUnusableConcurrent(t *testing.T) {
	t.Parallel()
	var logs admintest.LogBuffer
	srv := bareServer(t, "", &logs, nil)
	var wg sync.WaitGroup
	for i := range 400 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", fmt.Sprintf("/api/v1/x%d", i), nil)
			req.RemoteAddr = fmt.Sprintf("[2001:db8:%x::1]:1", i)
			if i%2 == 0 {
				req.Header.Set("Authorization", fmt.Sprintf("Bearer guess-%d", i))
			}
			srv.ServeHTTP(&discardWriter{h: http.Header{}}, req)
		})
	}
	wg.Wait()
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("%d warnings, want 1", n)
	}
}
