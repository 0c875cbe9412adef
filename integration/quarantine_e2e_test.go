package integration

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// quarantineRepo is the repository every image of the test lives in, as
// the admin names it: upstream hcl, under the hcl-pinned policy.
const quarantineRepo = "hcl/vendor/app"

// quarantineEnv is one airlock under a pin policy with an admin token and
// a signed webhook, and the private containerd and dockerd that pull
// through it.
type quarantineEnv struct {
	t         *testing.T
	al        *airlocktest.Airlock
	up        *upstreamtest.Upstream
	hook      *webhookReceiver
	ctd       *clients.Containerd
	dkd       *clients.Dockerd
	hostsDir  string
	tokenFile string
}

// TestQuarantineWithClients walks the quarantine workflow with the built
// binary and real containerd and docker: a pull of an unpinned digest is
// refused with a message saying why and what an admin runs; the admin
// finds it with `quarantine list`, releases it (both clients then pull
// it), blocks an approved image (both clients are refused, also with the
// layers already in their stores), lets a release expire (refused again);
// the audit log shows every change in order with its actor, and `audit
// verify` catches a record edited in the store; the webhook receiver got
// each event signed, also one queued while it was down across a restart.
func TestQuarantineWithClients(t *testing.T) {
	t.Parallel()
	start := time.Now()
	e := &quarantineEnv{t: t, up: upstreamtest.New(t, upstreamtest.Options{})}
	pinned := e.up.PushImage(t, "vendor/app", "1.0", 48<<10, 2)   // approved, later blocked
	unpinned := e.up.PushImage(t, "vendor/app", "1.1", 48<<10, 2) // quarantined, then released
	expiring := e.up.PushImage(t, "vendor/app", "1.2", 48<<10, 1) // released briefly, expires

	dir := t.TempDir()
	pins := filepath.Join(dir, "hcl.txt")
	e.tokenFile = filepath.Join(dir, "cli-token")
	serverTokens := filepath.Join(dir, "admin-tokens")
	secretFile := filepath.Join(dir, "webhook-secret")
	const token, secret = "alice-e2e-0123456789abcdef", "webhook-shared-secret"
	for f, body := range map[string]string{
		pins:         "# vendor-published digests\n" + quarantineRepo + ":1.0 " + pinned.Digest.String() + "\n",
		serverTokens: "alice:" + token + "\n",
		e.tokenFile:  token + "\n",
		secretFile:   secret + "\n",
	} {
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.hook = newWebhookReceiver(t, []byte(secret))
	e.al = e2eStart(t, airlocktest.Config{
		Upstreams: []airlocktest.Upstream{
			{Name: "hcl", URL: e.up.URL, Aliases: []string{"registry.hcl.test"}, Retry: airlocktest.FastRetry()},
		},
		Policies:       []airlocktest.Policy{{Name: "hcl-pinned", Match: []string{"hcl/*"}, Mode: "enforce", Pins: pins}},
		AdminTokenFile: serverTokens,
		Alerts:         &airlocktest.Alerts{Webhooks: []airlocktest.Webhook{{URL: e.hook.URL, SecretFile: secretFile}}},
	})
	e.ctd = clients.StartContainerd(t)
	e.dkd = clients.StartDockerd(t, e.ctd)
	e.hostsDir = t.TempDir()
	if err := clients.WriteHostsDir(e.hostsDir, map[string]string{"registry.hcl.test": e.al.URL}); err != nil {
		t.Fatal(err)
	}

	// The pinned image is approved on sight: both clients pull it.
	e.pullOK("1.0", pinned)

	// An unpinned digest is refused, and each client shows why.
	e.pullRefused("1.1", unpinned, "quarantined", "policy hcl-pinned: tag 1.1 resolved to", "which is not pinned")
	if r, err := e2eGet(t.Context(), e.al.URL+"/v2/"+quarantineRepo+"/manifests/1.2", "Accept", manifestAccept); err != nil || r.Status != http.StatusForbidden {
		t.Fatalf("GET 1.2 (unpinned): %d, %v; want 403", r.Status, err)
	}
	e.hook.waitFor(t, "image.quarantined", unpinned.Digest.String(), time.Time{})
	e.hook.waitFor(t, "image.quarantined", expiring.Digest.String(), time.Time{})

	// quarantine list -o json, once with flags and once from the
	// environment, shows both with the policy's reason.
	flags := []string{"--server", e.al.AdminURL, "--token-file", e.tokenFile}
	env := []string{"AIRLOCK_SERVER=" + e.al.AdminURL, "AIRLOCK_TOKEN_FILE=" + e.tokenFile}
	for _, run := range []cliResult{
		e.cliOK(nil, append([]string{"quarantine", "list", "-o", "json"}, flags...)...),
		e.cliOK(env, "quarantine", "list", "-o", "json"),
	} {
		e.checkQuarantineList(run.stdout, map[string]string{unpinned.Digest.String(): "1.1", expiring.Digest.String(): "1.2"})
	}

	// A release that ends in a few seconds; the pull right after passes.
	released := time.Now()
	e.cliOK(nil, append([]string{"release", quarantineRepo + "@" + expiring.Digest.String(),
		"--reason", "hotfix while the vendor publishes pins", "--expires", "10s"}, flags...)...)
	if _, err := e.ctd.Pull(t.Context(), e.hostsDir, e.ctrRef("1.2")); err != nil {
		t.Fatalf("ctr pull of 1.2 within its 10s release: %v", err)
	}

	// A release through a date lets 1.1 through for both clients.
	until := time.Now().UTC().AddDate(0, 0, 30).Format(time.DateOnly)
	r := e.cliOK(nil, append([]string{"release", quarantineRepo + "@" + unpinned.Digest.String(),
		"--reason", "vendor confirmed the build by mail", "--expires", until}, flags...)...)
	if !strings.Contains(r.stdout, "released") {
		t.Errorf("release printed %q", r.stdout)
	}
	e.pullOK("1.1", unpinned)
	e.hook.waitFor(t, "image.released", unpinned.Digest.String(), time.Time{})

	// The receiver is down when the block happens; airlock restarts
	// before it comes back; the event arrives from the persisted outbox.
	e.hook.setDown(true)
	e.cliOK(env, "block", quarantineRepo+"@"+pinned.Digest.String(), "--reason", "CVE-2026-1234 in the vendor's libc")
	e.hook.waitRefused(t, "image.blocked")
	e.al.Restart(t)
	restarted := time.Now()
	e.hook.setDown(false)
	blocked := e.hook.waitFor(t, "image.blocked", pinned.Digest.String(), restarted)
	if blocked.Event.Actor != "admin:alice" || blocked.Event.Reason != "CVE-2026-1234 in the vendor's libc" {
		t.Errorf("image.blocked event: actor %q reason %q", blocked.Event.Actor, blocked.Event.Reason)
	}

	// The block refuses the approved image, first with its layers still
	// in both clients' stores, then from empty stores.
	e.pullRefused("1.0", pinned, "blocked", "blocked by admin:alice: CVE-2026-1234 in the vendor's libc")
	for _, b := range pinned.Blobs() {
		if r, err := e2eGet(t.Context(), e.al.URL+"/v2/"+quarantineRepo+"/blobs/"+b.String()); err != nil || r.Status < 400 {
			t.Errorf("blob %s of the blocked image: %d (%v), want a refusal", b, r.Status, err)
		}
	}
	e.removeFromClients("1.0", pinned)
	e.pullRefused("1.0", pinned, "blocked", "blocked by admin:alice: CVE-2026-1234 in the vendor's libc")

	// 1.2's release ends: the next pulls are refused again.
	expired := e.hook.waitFor(t, "image.release_expired", expiring.Digest.String(), released.Add(10*time.Second))
	if expired.Event.State != metadata.StateQuarantined {
		t.Errorf("image.release_expired event: state %q, want quarantined", expired.Event.State)
	}
	e.pullRefused("1.2", expiring, "quarantined", "policy hcl-pinned: tag 1.2 resolved to")

	// The audit log: every change in order, the admin's with her name.
	r = e.cliOK(env, "audit", "-o", "json")
	var recs []metadata.AuditRecord
	if err := json.Unmarshal([]byte(r.stdout), &recs); err != nil {
		t.Fatalf("audit -o json is not an array of records: %v\n%s", err, r.stdout)
	}
	checkQuarantineAudit(t, recs, pinned.Digest.String(), unpinned.Digest.String(), expiring.Digest.String())
	// The release through a date holds through that day, UTC.
	day, _ := time.Parse(time.DateOnly, until)
	for _, rec := range recs {
		if rec.Action == "release" && string(rec.Digest) == unpinned.Digest.String() &&
			(rec.Reason != "vendor confirmed the build by mail" || !rec.Expires.Equal(day.AddDate(0, 0, 1))) {
			t.Errorf("release record of 1.1: reason %q, expires %v; want the admin's reason and %v", rec.Reason, rec.Expires, day.AddDate(0, 0, 1))
		}
	}
	r = e.cliOK(env, "audit", "verify")
	if !strings.Contains(r.stdout, fmt.Sprintf("audit log OK: %d records", len(recs))) {
		t.Errorf("audit verify printed %q", r.stdout)
	}

	// Every event arrived once, signed, in the order of the changes.
	e.hook.checkEvents(t, []string{
		"image.quarantined " + unpinned.Digest.String(),
		"image.quarantined " + expiring.Digest.String(),
		"image.released " + expiring.Digest.String(),
		"image.released " + unpinned.Digest.String(),
		"image.blocked " + pinned.Digest.String(),
		"image.release_expired " + expiring.Digest.String(),
	})

	// Someone with the file rewrites a record's reason; verify says which.
	if err := e.al.Stop(); err != nil {
		t.Fatal(err)
	}
	edited := recs[slices.IndexFunc(recs, func(r metadata.AuditRecord) bool { return r.Action == "block" })].Seq
	admintest.EditAuditRecord(t, filepath.Join(e.al.DataDir, "metadata.db"), edited, "routine maintenance")
	e.al.Restart(t)
	bad := e.cli(env, "audit", "verify")
	if bad.code == 0 || !strings.HasPrefix(bad.stdout, fmt.Sprintf("audit log BROKEN at record %d: record %d was edited", edited, edited)) ||
		!strings.Contains(bad.stderr, "does not verify") {
		t.Fatalf("audit verify after record %d was edited in the store: %s", edited, bad)
	}
	t.Logf("took %v", time.Since(start))
}

// ctrRef is the reference containerd pulls: the vendor's registry name,
// sent to airlock by hosts.toml (?ns=registry.hcl.test).
func (e *quarantineEnv) ctrRef(tag string) string { return "registry.hcl.test/vendor/app:" + tag }

// dockerRef is the reference docker pulls: airlock's address and the
// repository as airlock names it.
func (e *quarantineEnv) dockerRef(tag string) string {
	return e.al.Host + "/" + quarantineRepo + ":" + tag
}

// pullOK pulls tag with both clients and checks they hold img.
func (e *quarantineEnv) pullOK(tag string, img upstreamtest.Image) {
	t, ctx := e.t, e.t.Context()
	t.Helper()
	if out, err := e.ctd.Pull(ctx, e.hostsDir, e.ctrRef(tag)); err != nil {
		t.Fatalf("ctr pull %s: %v\n%s", e.ctrRef(tag), err, out)
	}
	if got, err := e.ctd.ImageDigest(ctx, e.ctrRef(tag)); err != nil || got != img.Digest.String() {
		t.Fatalf("containerd's %s is %q (%v), want %s", e.ctrRef(tag), got, err, img.Digest)
	}
	for _, b := range img.Blobs() {
		if ok, err := e.ctd.HasContent(ctx, b.String()); err != nil || !ok {
			t.Fatalf("containerd lacks %s of %s after the pull (%v)", b, tag, err)
		}
	}
	if out, err := e.dkd.Pull(ctx, e.dockerRef(tag)); err != nil {
		t.Fatalf("docker pull %s: %v\n%s", e.dockerRef(tag), err, out)
	}
	digests, err := e.dkd.RepoDigests(ctx, e.dockerRef(tag))
	if err != nil || !slices.Contains(digests, e.al.Host+"/"+quarantineRepo+"@"+img.Digest.String()) {
		t.Fatalf("docker's repo digests of %s = %v (%v), want %s", tag, digests, err, img.Digest)
	}
	// docker's image ID is its config's digest, which it checked
	// against the layers' diff IDs.
	id, err := e.dkd.Docker(ctx, "image", "inspect", "--format", "{{.Id}}", e.dockerRef(tag))
	if err != nil || strings.TrimSpace(id) != img.Config.String() {
		t.Fatalf("docker's image ID of %s = %q (%v), want the config digest %s", tag, id, err, img.Config)
	}
}

// pullRefused pulls tag with both clients, which must fail with
// airlock's refusal; state is the state the refusal names and reasons the
// texts it must give.
//
// docker asks for the manifest with a GET and prints the refusal's
// message. containerd resolves a tag with a HEAD, whose answer has no
// body, and prints the status alone: its user sees "403 Forbidden" on the
// manifest, and the message is in airlock's log line for that request.
func (e *quarantineEnv) pullRefused(tag string, img upstreamtest.Image, state string, reasons ...string) {
	t, ctx := e.t, e.t.Context()
	t.Helper()
	ref := quarantineRepo + "@" + img.Digest.String()
	message := append([]string{ref + " is " + state + ": ", "An admin can see why with: airlock images show " + ref}, reasons...)

	logged := len(e.al.Logs())
	out, err := e.ctd.Pull(ctx, e.hostsDir, e.ctrRef(tag))
	if err == nil {
		t.Fatalf("ctr pull %s succeeded; the image is %s", e.ctrRef(tag), state)
	}
	if !strings.Contains(out, "403 Forbidden") || !strings.Contains(out, "manifests "+tag) && !strings.Contains(out, "manifests/"+tag) {
		t.Errorf("ctr pull %s failed without airlock's 403 on the manifest:\n%s", e.ctrRef(tag), out)
	}
	line := e.waitRequestLog(logged, func(l airlocktest.LogLine) bool {
		return l.Fields["method"] == http.MethodHead && l.Fields["reference"] == tag && l.Fields["ns"] == "registry.hcl.test"
	})
	if line.Fields["status"] != float64(http.StatusForbidden) || !containsAll(fmt.Sprint(line.Fields["error"]), message) {
		t.Errorf("airlock's log of containerd's refused HEAD for %s lacks %q:\n%s", tag, message, line.Raw)
	}

	out, err = e.dkd.Pull(ctx, e.dockerRef(tag))
	if err == nil {
		t.Fatalf("docker pull %s succeeded; the image is %s", e.dockerRef(tag), state)
	}
	if !strings.Contains(out, "denied: "+ref+" is "+state) || !containsAll(out, message) {
		t.Errorf("docker pull %s does not print why it was refused (%q):\n%s", e.dockerRef(tag), message, out)
	}
}

// waitRequestLog waits for a request log line after the first skip lines
// that match says is the one.
func (e *quarantineEnv) waitRequestLog(skip int, match func(airlocktest.LogLine) bool) airlocktest.LogLine {
	e.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, l := range e.al.Logs()[skip:] {
			if l.Msg() == "request" && match(l) {
				return l
			}
		}
		if time.Now().After(deadline) {
			var last strings.Builder
			for _, l := range e.al.Logs()[skip:] {
				last.WriteString(l.Raw + "\n")
			}
			e.t.Fatalf("no matching request log line from airlock among:\n%s", last.String())
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// removeFromClients deletes tag's image from both clients, and its
// content from containerd's store, so a later pull starts from nothing.
func (e *quarantineEnv) removeFromClients(tag string, img upstreamtest.Image) {
	t, ctx := e.t, e.t.Context()
	t.Helper()
	if _, err := e.ctd.Ctr(ctx, "images", "rm", "--sync", e.ctrRef(tag)); err != nil {
		t.Fatal(err)
	}
	for _, b := range img.Blobs() {
		if ok, err := e.ctd.HasContent(ctx, b.String()); err != nil || ok {
			t.Fatalf("containerd still holds %s after images rm --sync (%v)", b, err)
		}
	}
	if _, err := e.dkd.Docker(ctx, "rmi", e.dockerRef(tag)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.dkd.Docker(ctx, "image", "inspect", img.Config.String()); err == nil {
		t.Fatalf("docker still holds image %s after rmi", img.Config)
	}
}

// checkQuarantineList checks quarantine list -o json against want (digest
// → tag): exactly those images, quarantined by the policy for that tag.
func (e *quarantineEnv) checkQuarantineList(stdout string, want map[string]string) {
	t := e.t
	t.Helper()
	var list []map[string]any
	if err := json.Unmarshal([]byte(stdout), &list); err != nil {
		t.Fatalf("quarantine list -o json is not a JSON array: %v\n%s", err, stdout)
	}
	if len(list) != len(want) {
		t.Fatalf("quarantine list has %d images, want %d:\n%s", len(list), len(want), stdout)
	}
	for _, img := range list {
		for _, k := range []string{"repository", "digest", "tags", "state", "reasons", "firstSeen", "updatedAt"} {
			if _, ok := img[k]; !ok {
				t.Errorf("quarantine list entry lacks %q: %v", k, img)
			}
		}
		d, _ := img["digest"].(string)
		tag, ok := want[d]
		if !ok || img["repository"] != quarantineRepo || img["state"] != "quarantined" {
			t.Errorf("quarantine list entry %v: want one of %v in %s, quarantined", img, want, quarantineRepo)
			continue
		}
		if tags, _ := img["tags"].([]any); len(tags) != 1 || tags[0] != tag {
			t.Errorf("%s: tags %v, want [%s]", d, img["tags"], tag)
		}
		reasons, _ := img["reasons"].([]any)
		if len(reasons) != 1 {
			t.Errorf("%s: reasons %v, want one", d, img["reasons"])
			continue
		}
		reason, _ := reasons[0].(map[string]any)
		msg, _ := reason["message"].(string)
		if reason["type"] != "policy" || reason["policy"] != "hcl-pinned" || reason["tag"] != tag ||
			!strings.Contains(msg, "hcl-pinned") || !strings.Contains(msg, "tag "+tag) {
			t.Errorf("%s: reason %v, want type policy naming hcl-pinned and tag %s", d, reason, tag)
		}
		for _, k := range []string{"firstSeen", "updatedAt"} {
			s, _ := img[k].(string)
			if ts, err := time.Parse(time.RFC3339Nano, s); err != nil || time.Since(ts) > time.Minute || time.Since(ts) < 0 {
				t.Errorf("%s: %s %q is not a recent RFC 3339 time", d, k, s)
			}
		}
	}
}

// checkQuarantineAudit checks the audit log: the policy's decisions on
// first sight, the admin's releases and block as admin:alice, and the
// expiry of 1.2's release after its release, chained by hash.
func checkQuarantineAudit(t *testing.T, recs []metadata.AuditRecord, pinned, unpinned, expiring string) {
	t.Helper()
	var got []string
	var expireAt, releaseAt int
	for i, r := range recs {
		if r.Seq != uint64(i+1) || (i > 0 && r.Prev != recs[i-1].Hash) || r.Hash == "" {
			t.Errorf("audit record %d: seq %d, prev %q, hash %q: not chained to the one before", i, r.Seq, r.Prev, r.Hash)
		}
		if r.Repository != quarantineRepo {
			t.Errorf("audit record %d is about %s", r.Seq, r.Repository)
		}
		line := fmt.Sprintf("%s %s %s %s→%s", r.Actor, r.Action, r.Digest, r.From, r.To)
		switch {
		case r.Action == "expire":
			// When the expiry lands between the admin's changes
			// depends on timing; it must come after its release.
			expireAt = i
			if line != fmt.Sprintf("expiry expire %s released→quarantined", expiring) {
				t.Errorf("expiry record: %s", line)
			}
			continue
		case r.Action == "release" && string(r.Digest) == expiring:
			releaseAt = i
		}
		got = append(got, line)
	}
	want := []string{
		fmt.Sprintf("policy decide %s →approved", pinned),
		fmt.Sprintf("policy decide %s →quarantined", unpinned),
		fmt.Sprintf("policy decide %s →quarantined", expiring),
		fmt.Sprintf("admin:alice release %s quarantined→released", expiring),
		fmt.Sprintf("admin:alice release %s quarantined→released", unpinned),
		fmt.Sprintf("admin:alice block %s approved→blocked", pinned),
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit log, expiry aside:\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	if expireAt == 0 || expireAt < releaseAt {
		t.Errorf("audit log: expiry of %s at %d, its release at %d", expiring, expireAt, releaseAt)
	}
	for _, r := range recs {
		if r.Action == "block" && r.Reason != "CVE-2026-1234 in the vendor's libc" {
			t.Errorf("block record's reason %q", r.Reason)
		}
	}
}

// cliResult is one run of the airlock CLI.
type cliResult struct {
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%sstderr:\n%s", r.code, r.stdout, r.stderr)
}

// cli runs the built binary with args; env is added to the test's
// environment without any AIRLOCK_* variable of its own.
func (e *quarantineEnv) cli(env []string, args ...string) cliResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e2eBinary.Path, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AIRLOCK_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("running airlock %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// cliOK is cli that requires exit status 0.
func (e *quarantineEnv) cliOK(env []string, args ...string) cliResult {
	e.t.Helper()
	r := e.cli(env, args...)
	if r.code != 0 {
		e.t.Fatalf("airlock %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// webhookReceiver is an alert receiver on loopback. It checks each
// request's signature, answers 503 while down, and keeps each event that
// arrived, once per delivery id.
type webhookReceiver struct {
	URL    string
	secret []byte

	mu       sync.Mutex
	down     bool
	refused  []string // event types answered 503
	received []receivedEvent
	seen     map[string]bool
	grew     chan struct{}
}

// receivedEvent is one accepted delivery.
type receivedEvent struct {
	Event metadata.Event
	At    time.Time
}

func newWebhookReceiver(t *testing.T, secret []byte) *webhookReceiver {
	w := &webhookReceiver{secret: secret, seen: map[string]bool{}, grew: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		// Checked as a receiver would, from the documented scheme rather
		// than airlock's own code: sha256=<hex HMAC-SHA256 of the body>.
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		if sig := r.Header.Get("X-Airlock-Signature-256"); !hmac.Equal([]byte(sig), []byte(want)) {
			t.Errorf("webhook request %s: signature %q does not match its body %s", r.Header.Get("X-Airlock-Event"), sig, body)
			http.Error(rw, "bad signature", http.StatusUnauthorized)
			return
		}
		var ev metadata.Event
		if err := json.Unmarshal(body, &ev); err != nil || ev.Type != r.Header.Get("X-Airlock-Event") {
			t.Errorf("webhook body %s (%v) does not match its X-Airlock-Event header", body, err)
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.down {
			w.refused = append(w.refused, ev.Type)
			http.Error(rw, "receiver down for maintenance", http.StatusServiceUnavailable)
			return
		}
		id := r.Header.Get("X-Airlock-Delivery")
		if !w.seen[id] {
			w.seen[id] = true
			w.received = append(w.received, receivedEvent{Event: ev, At: time.Now()})
		}
		close(w.grew)
		w.grew = make(chan struct{})
		rw.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	w.URL = srv.URL + "/hooks/airlock"
	return w
}

func (w *webhookReceiver) setDown(down bool) {
	w.mu.Lock()
	w.down = down
	w.mu.Unlock()
}

// waitFor waits until an event of type typ about digest d arrived at or
// after since, and returns it.
func (w *webhookReceiver) waitFor(t *testing.T, typ, d string, since time.Time) receivedEvent {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		w.mu.Lock()
		grew := w.grew
		for _, ev := range w.received {
			if ev.Event.Type == typ && string(ev.Event.Digest) == d && !ev.At.Before(since) {
				w.mu.Unlock()
				return ev
			}
		}
		w.mu.Unlock()
		select {
		case <-grew:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s event for %s arrived after %s; got %v", typ, d, since.Format(time.RFC3339Nano), w.types())
		}
	}
}

// waitRefused waits until the receiver answered 503 to an event of typ.
func (w *webhookReceiver) waitRefused(t *testing.T, typ string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		w.mu.Lock()
		ok := slices.Contains(w.refused, typ)
		w.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("airlock did not try to send %s while the receiver was down", typ)
		}
	}
}

func (w *webhookReceiver) types() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, ev := range w.received {
		out = append(out, ev.Event.Type+" "+string(ev.Event.Digest))
	}
	return out
}

// checkEvents checks that exactly want ("type digest") arrived, once and
// in order (a release's expiry anywhere after its release), each about the test's repository with the audit hash of its change.
func (w *webhookReceiver) checkEvents(t *testing.T, want []string) {
	t.Helper()
	got := w.types()
	// The expiry's event comes after its release; where among the
	// admin's changes depends on timing.
	expired := slices.IndexFunc(got, func(s string) bool { return strings.HasPrefix(s, "image.release_expired ") })
	if expired >= 0 {
		released := slices.Index(got, strings.Replace(got[expired], "image.release_expired", "image.released", 1))
		if released < 0 || released > expired {
			t.Errorf("webhook events: %s arrived before its release: %v", got[expired], got)
		}
		want = slices.DeleteFunc(slices.Clone(want), func(s string) bool { return s == got[expired] })
		got = slices.Delete(got, expired, expired+1)
	}
	if !slices.Equal(got, want) {
		t.Errorf("webhook events, expiry aside:\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ev := range w.received {
		if ev.Event.Repository != quarantineRepo || !strings.HasPrefix(ev.Event.Audit, "sha256:") || ev.Event.ID == "" {
			t.Errorf("event %+v: want repository %s, an id and the audit record's hash", ev.Event, quarantineRepo)
		}
	}
}
