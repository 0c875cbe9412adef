package alerts_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/alerts"
	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

func TestRoute(t *testing.T) {
	t.Parallel()
	a := config.Alerts{Webhooks: []config.Webhook{
		{URL: "http://127.0.0.1:1/all"},
		{URL: "http://127.0.0.1:1/quarantine", Events: []string{config.EventQuarantined}},
		{URL: "http://127.0.0.1:1/admin", Events: []string{config.EventBlocked, config.EventReleased}},
	}}
	r, err := alerts.NewRouter(a)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		event string
		want  []string
	}{
		{config.EventQuarantined, []string{"/all", "/quarantine"}},
		{config.EventBlocked, []string{"/all", "/admin"}},
		{config.EventReleased, []string{"/all", "/admin"}},
		{config.EventReleaseExpired, []string{"/all"}},
		{config.EventScanFailed, []string{"/all"}},
		// An event no webhook lists goes nowhere, not even to one that
		// takes "all": all means the documented events.
		{"image.approved", nil},
	}
	at := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	for _, tt := range tests {
		ev := metadata.Event{Type: tt.event, Time: at, Repository: "hcl/app", Digest: testDigest,
			Reasons: []metadata.Reason{{Type: metadata.ReasonPolicy, Message: "not pinned"}}}
		var got []string
		for _, d := range r.Route(ev) {
			got = append(got, strings.TrimPrefix(d.Target, "http://127.0.0.1:1"))
			if d.Event.Type != tt.event || d.Event.Repository != "hcl/app" || len(d.Event.Reasons) != 1 {
				t.Errorf("%s: delivery carries %+v, want the event", tt.event, d.Event)
			}
			if !d.NextAttempt.Equal(at) || d.Seq != 0 || d.Attempts != 0 {
				t.Errorf("%s: delivery %+v: want due at the event's time, no seq, no attempts", tt.event, d)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("Route(%s) targets %v, want %v", tt.event, got, tt.want)
		}
	}
}

func TestRouterSecrets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "s3cret\n")
	tests := []struct {
		name, file, want string
	}{
		{"missing", filepath.Join(dir, "absent"), "alerts.webhooks[0].secretFile"},
		{"empty", write("empty", "\n"), "is empty"},
		{"too large", write("large", strings.Repeat("x", 65<<10)), "larger than"},
		{"directory", dir, "alerts.webhooks[0].secretFile"},
	}
	r, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: "http://127.0.0.1:1/a", SecretFile: good}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		a := config.Alerts{Webhooks: []config.Webhook{{URL: "http://127.0.0.1:1/b", SecretFile: tt.file}}}
		if _, err := alerts.NewRouter(a); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: NewRouter error %v, want one with %q", tt.name, err, tt.want)
		}
		// A reload that cannot read its secret keeps what was in force.
		if err := r.SetConfig(a); err == nil {
			t.Errorf("%s: SetConfig accepted it", tt.name)
		}
		if got := r.Route(metadata.Event{Type: config.EventBlocked}); len(got) != 1 || got[0].Target != "http://127.0.0.1:1/a" {
			t.Errorf("%s: after a refused SetConfig, Route gives %+v, want the webhook in force", tt.name, got)
		}
	}
	next, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: "http://127.0.0.1:1/c", Events: []string{config.EventBlocked}}}})
	if err != nil {
		t.Fatal(err)
	}
	r.Replace(next)
	if got := r.Route(metadata.Event{Type: config.EventBlocked}); len(got) != 1 || got[0].Target != "http://127.0.0.1:1/c" {
		t.Errorf("after Replace, Route gives %+v, want the new webhook", got)
	}
	if got := r.Route(metadata.Event{Type: config.EventReleased}); len(got) != 0 {
		t.Errorf("after Replace, Route gives %+v for an event the new webhook does not take", got)
	}
	for _, bad := range []string{"", "ftp://127.0.0.1/x", "http://"} {
		if _, err := alerts.NewRouter(config.Alerts{Webhooks: []config.Webhook{{URL: bad}}}); err == nil {
			t.Errorf("NewRouter accepted webhook URL %q", bad)
		}
	}
}

func TestSign(t *testing.T) {
	t.Parallel()
	// GitHub's documented example: secret "It's a Secret to Everybody",
	// payload "Hello, World!".
	got := alerts.Sign([]byte("It's a Secret to Everybody"), []byte("Hello, World!"))
	want := "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
	if got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}
