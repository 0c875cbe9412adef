package gate_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// TestRecentDenials: refused pulls are listed newest first with the
// image's state and what the client was told; a retried refusal folds into
// one entry, and allowed pulls are not listed.
func TestRecentDenials(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	pinned := up.PushImage(t, "vendor/app", "1.0", 256, 1)
	up.PushImage(t, "vendor/app", "1.1", 256, 1)
	other := up.PushImage(t, "vendor/tool", "2", 256, 1)
	h := newHarness(t, up, t.TempDir(), "hcl/vendor/app:1.0 "+pinned.Digest.String()+"\n")

	if got := h.gate.RecentDenials(0); len(got) != 0 {
		t.Fatalf("a fresh gate lists %d denials", len(got))
	}
	h.wantStatus(manifestPath("hcl/vendor/app", "1.0"), http.StatusOK)
	h.wantStatus(manifestPath("hcl/vendor/app", "1.1"), http.StatusForbidden)
	h.wantStatus(manifestPath("hcl/vendor/app", "1.1"), http.StatusForbidden)
	h.wantStatus(manifestPath("hcl/vendor/tool", "2"), http.StatusForbidden)

	got := h.gate.RecentDenials(0)
	if len(got) != 2 {
		t.Fatalf("denials = %+v; want 2 entries (the retry folded into the first)", got)
	}
	tool, app := got[0], got[1]
	if tool.Repository != "hcl/vendor/tool" || tool.Digest.String() != other.Digest.String() || tool.Tag != "2" {
		t.Fatalf("newest denial = %+v; want hcl/vendor/tool:2", tool)
	}
	if app.Repository != "hcl/vendor/app" || app.Tag != "1.1" || app.Count != 2 ||
		app.State != metadata.StateQuarantined || !strings.Contains(app.Message, "hcl-pinned") || app.Pending {
		t.Fatalf("older denial = %+v; want hcl/vendor/app:1.1 quarantined by hcl-pinned, twice", app)
	}
	if one := h.gate.RecentDenials(1); len(one) != 1 || one[0].Repository != "hcl/vendor/tool" {
		t.Fatalf("RecentDenials(1) = %+v", one)
	}

	// The ring is bounded: many refusals keep only the latest.
	for i := range 100 {
		h.get(manifestPath("hcl/vendor/app", fmt.Sprintf("missing-%d", i)))
		h.wantStatus(manifestPath("hcl/vendor/tool", "2"), http.StatusForbidden)
		h.wantStatus(manifestPath("hcl/vendor/app", "1.1"), http.StatusForbidden)
	}
	if all := h.gate.RecentDenials(0); len(all) > 64 || len(all) < 32 || all[0].Tag != "1.1" {
		t.Fatalf("after many refusals: %d entries, newest %+v; want at most 64, newest 1.1", len(all), all[0])
	}
}
