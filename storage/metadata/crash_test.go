package metadata

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// crashChildEnv names the index a re-executed test binary writes to until
// it is killed.
const crashChildEnv = "AIRLOCK_METADATA_CRASH_CHILD"

// crashImages is how many images the child moves between states.
const crashImages = 5

// TestCrashChild is the child half of TestCrashSafety: when the variable
// is set it changes images as fast as it can, printing a line after each
// commit, until it is killed. Otherwise it does nothing.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		t.Skip("runs only as TestCrashSafety's child")
	}
	db, err := Open(path)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	states := []State{StatePending, StateQuarantined, StateReleased, StateApproved, StateBlocked}
	for i := 0; ; i++ {
		repo := fmt.Sprintf("vendor/app%d", i%crashImages)
		_, err := db.UpdateImage(t.Context(), repo, digest.FromString(repo), time.Now(), func(img *Image) (Change, error) {
			next := states[(i/crashImages+i)%len(states)]
			if next == img.State {
				next = states[(i/crashImages+i+1)%len(states)]
			}
			img.State = next
			img.Tags = append(img.Tags[:0], fmt.Sprintf("t%d", i))
			img.Reasons = []Reason{{Type: ReasonManual, Message: fmt.Sprintf("change %d", i)}}
			return Change{Actor: "crash:child", Action: "decide",
				Deliveries: []Delivery{{Target: "ops", Event: Event{Type: "image.changed", Repository: repo, State: next}}}}, nil
		})
		if err != nil {
			fmt.Println("update:", err)
			os.Exit(2)
		}
		// Failed attempts rewrite outbox entries in place: a crash during
		// one must not lose or damage the entry.
		if i%3 == 0 {
			if ds, err := db.DueDeliveries(t.Context(), time.Now(), 1); err == nil && len(ds) == 1 {
				db.RetryDelivery(t.Context(), ds[0].Seq, time.Now(), "connection refused")
			}
		}
		fmt.Println("committed", i)
	}
}

// TestCrashSafety kills a process that is changing images (SIGKILL, no
// chance to close the file) at arbitrary points and checks what a restart
// finds: the store opens, the audit chain verifies and holds every
// acknowledged change, each image's state is its last audit record's, and
// every change's alert is still queued, readable and anchored in the chain.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	t.Parallel()
	path := filepath.Join(t.TempDir(), "airlock.db")
	acked := 0
	for round, kills := range []int{3, 17, 40, 9} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := bufio.NewScanner(out)
		n := 0
		for n < kills && lines.Scan() {
			var i int
			if _, err := fmt.Sscanf(lines.Text(), "committed %d", &i); err != nil {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: child said %q", round, lines.Text())
			}
			n++
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if n < kills {
			t.Fatalf("round %d: child stopped after %d commits", round, n)
		}
		acked += n
		checkAfterCrash(t, path, acked)
	}
}

func checkAfterCrash(t *testing.T, path string, acked int) {
	t.Helper()
	ctx := t.Context()
	db, err := Open(path)
	if err != nil {
		t.Fatalf("reopening after kill -9: %v", err)
	}
	defer db.Close()
	check, err := db.VerifyAudit(ctx)
	if err != nil || !check.OK {
		t.Fatalf("audit after kill -9: %+v, %v", check, err)
	}
	if check.Records < uint64(acked) {
		t.Fatalf("audit holds %d records after %d acknowledged changes", check.Records, acked)
	}
	recs, err := db.Audit(ctx, 0, 1000)
	if err != nil || uint64(len(recs)) != check.Records {
		t.Fatalf("Audit = %d records, %v; want %d", len(recs), err, check.Records)
	}
	last := map[string]AuditRecord{}
	hashes := map[string]bool{}
	for _, r := range recs {
		last[r.Repository] = r
		hashes[r.Hash] = true
	}
	for repo, r := range last {
		img, err := db.Image(ctx, repo, digest.FromString(repo))
		if err != nil || img.State != r.To || len(img.Reasons) != 1 || img.Reasons[0].Message != r.Reasons[0].Message {
			t.Errorf("%s is %+v (%v) but its last audit record is %+v", repo, img, err, r)
		}
	}
	ds, err := db.DueDeliveries(ctx, time.Now().Add(time.Hour), 1000)
	if err != nil {
		t.Fatalf("outbox after kill -9: %v", err)
	}
	if len(ds) != len(recs) {
		t.Fatalf("outbox holds %d deliveries for %d changes", len(ds), len(recs))
	}
	ids := map[string]bool{}
	for _, d := range ds {
		if !hashes[d.Event.Audit] || ids[d.Event.ID] || d.Target != "ops" {
			t.Errorf("delivery %d after kill -9 = %+v; want a unique ID anchored in the chain", d.Seq, d)
		}
		ids[d.Event.ID] = true
	}
}
