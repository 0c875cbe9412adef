package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin/admintest"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// The CLI tests run the built binary, as an admin would, against a whole
// airlock in-process (admintest): real upstream, proxy, gate, store and
// admin API.

var cliBinary struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// TestMain removes the binary airlockBinary built, and stops the
// PostgreSQL server the tests that need one started. Tests of this package
// that need the binary call airlockBinary rather than build their own.
func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if cliBinary.path != "" {
		os.RemoveAll(filepath.Dir(cliBinary.path))
	}
	os.Exit(code)
}

// airlockBinary builds airlock once per test run.
func airlockBinary(t *testing.T) string {
	t.Helper()
	cliBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "airlock-cli-test-")
		if err != nil {
			cliBinary.err = err
			return
		}
		name := "airlock"
		if runtime.GOOS == "windows" {
			name += ".exe"
		}
		cliBinary.path = filepath.Join(dir, name)
		// The flags of the image's build (scripts/image.sh), which
		// scripts/test.sh vets with: the dependencies are compiled once.
		cmd := exec.Command("go", "build", "-trimpath", "-o", cliBinary.path, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cliBinary.out, cliBinary.err = cmd.CombinedOutput()
	})
	if cliBinary.err != nil {
		t.Fatalf("building airlock: %v\n%s", cliBinary.err, cliBinary.out)
	}
	return cliBinary.path
}

// cliRun is one run of the binary.
type cliRun struct {
	stdout, stderr string
	code           int
}

// cli runs airlock with args and env (added to a clean AIRLOCK_* slate).
func cli(t *testing.T, env []string, args ...string) cliRun {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), airlockBinary(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AIRLOCK_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	run := cliRun{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		run.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running airlock %s: %v", strings.Join(args, " "), err)
	}
	return run
}

func (r cliRun) String() string {
	return "exit " + strconv.Itoa(r.code) + "\nstdout:\n" + r.stdout + "stderr:\n" + r.stderr
}

// cliFixture is an airlock with an approved image (hcl/vendor/app:1.0,
// pinned) and a quarantined one (:1.1), and the flags of an admin.
type cliFixture struct {
	*admintest.Harness
	t                     *testing.T
	flags                 []string
	tokenFile             string
	pinned, unpinned      digest.Digest
	pinnedRef, unpinnedRf string
}

const cliRepo = "hcl/vendor/app"

func newCLIFixture(t *testing.T) *cliFixture {
	t.Helper()
	up := upstreamtest.New(t, upstreamtest.Options{})
	pinned := up.PushImage(t, "vendor/app", "1.0", 256, 1)
	unpinned := up.PushImage(t, "vendor/app", "1.1", 256, 1)
	h := admintest.New(t, up, cliRepo+":1.0 "+pinned.Digest.String()+"\n")
	h.MustPull(cliRepo, "1.0", http.StatusOK)
	h.MustPull(cliRepo, "1.1", http.StatusForbidden)
	f := &cliFixture{Harness: h, t: t, tokenFile: filepath.Join(t.TempDir(), "token"),
		pinned: digest.Digest(pinned.Digest.String()), unpinned: digest.Digest(unpinned.Digest.String())}
	f.pinnedRef, f.unpinnedRf = cliRepo+"@"+string(f.pinned), cliRepo+"@"+string(f.unpinned)
	if err := os.WriteFile(f.tokenFile, []byte(admintest.AliceToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.flags = []string{"--server", f.Admin.URL, "--token-file", f.tokenFile}
	return f
}

// ok runs a verb with the admin's flags and fails unless it exits 0.
func (f *cliFixture) ok(args ...string) cliRun {
	f.t.Helper()
	r := cli(f.t, nil, append(args, f.flags...)...)
	if r.code != 0 {
		f.t.Fatalf("airlock %s: %s", strings.Join(args, " "), r)
	}
	return r
}

func (f *cliFixture) pull(ref string) int {
	f.t.Helper()
	status, _ := f.Pull(cliRepo, ref)
	return status
}

// TestCLIQuarantineReleaseBlockAudit is the admin's day at the command
// line: see what was quarantined and why, release it, block another,
// read and verify the audit log, and see verify catch an edited record.
func TestCLIQuarantineReleaseBlockAudit(t *testing.T) {
	t.Parallel()
	f := newCLIFixture(t)

	// quarantine list -o json is an array of images with the fields.
	r := f.ok("quarantine", "list", "-o", "json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("quarantine list -o json is not a JSON array: %v\n%s", err, r.stdout)
	}
	if len(list) != 1 || list[0]["digest"] != string(f.unpinned) || list[0]["state"] != "quarantined" {
		t.Fatalf("quarantine list: %s", r.stdout)
	}
	for _, k := range []string{"repository", "digest", "tags", "state", "reasons", "firstSeen", "updatedAt"} {
		if _, ok := list[0][k]; !ok {
			t.Errorf("quarantine list -o json lacks %q", k)
		}
	}
	reasons, _ := list[0]["reasons"].([]any)
	if len(reasons) != 1 || reasons[0].(map[string]any)["policy"] != "hcl-pinned" {
		t.Fatalf("reasons: %v", list[0]["reasons"])
	}

	// The table, with the server and token from the environment.
	env := []string{"AIRLOCK_SERVER=" + f.Admin.URL, "AIRLOCK_TOKEN_FILE=" + f.tokenFile}
	r = cli(t, env, "quarantine", "list")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "REPOSITORY") || !strings.Contains(r.stdout, cliRepo) ||
		!strings.Contains(r.stdout, string(f.unpinned)[7:19]) || !strings.Contains(r.stdout, "quarantined") {
		t.Fatalf("quarantine list from the environment: %s", r)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if n := len([]rune(l)); n > 100 {
			t.Errorf("table line of %d columns: %s", n, l)
		}
	}

	// images show by tag: a readable block, ending with the command to run.
	r = f.ok("images", "show", cliRepo+":1.1")
	for _, want := range []string{"Digest:", string(f.unpinned), "State:", "quarantined", "Reasons:", "hcl-pinned",
		"airlock release " + f.unpinnedRf + " --reason"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("images show lacks %q:\n%s", want, r.stdout)
		}
	}

	// release through a date lets exactly that digest through.
	day := f.Clock.Now().AddDate(0, 1, 0).Format(time.DateOnly)
	r = f.ok("release", f.unpinnedRf, "--reason", "vendor confirmed the build", "--expires", day)
	if !strings.Contains(r.stdout, "is now released until") {
		t.Fatalf("release printed: %s", r)
	}
	if got := f.pull("1.1"); got != http.StatusOK {
		t.Fatalf("pull after release = %d", got)
	}

	// block refuses an approved image.
	r = f.ok("block", f.pinnedRef, "--reason", "CVE-2026-0001")
	if !strings.Contains(r.stdout, "is now blocked") {
		t.Fatalf("block printed: %s", r)
	}
	if got := f.pull("1.0"); got != http.StatusForbidden {
		t.Fatalf("pull after block = %d", got)
	}
	r = f.ok("images", "list", "--state", "blocked", "-o", "json")
	var blocked []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &blocked); err != nil || len(blocked) != 1 || blocked[0]["digest"] != string(f.pinned) {
		t.Fatalf("images list --state blocked -o json: %v\n%s", err, r.stdout)
	}
	r = f.ok("images", "list", "-o", "wide")
	if !strings.Contains(r.stdout, "CACHED") || !strings.Contains(r.stdout, string(f.pinned)) {
		t.Fatalf("images list -o wide: %s", r.stdout)
	}
	r = f.ok("rescan", f.unpinnedRf)
	if !strings.Contains(r.stdout, "is now released") {
		t.Fatalf("rescan printed: %s", r)
	}

	// audit shows each event in order.
	r = f.ok("audit", "-o", "json")
	var recs []metadata.AuditRecord
	if err := json.Unmarshal([]byte(r.stdout), &recs); err != nil {
		t.Fatalf("audit -o json: %v\n%s", err, r.stdout)
	}
	var actions []string
	for _, rec := range recs {
		actions = append(actions, rec.Actor+" "+rec.Action+" "+string(rec.To))
	}
	want := []string{"admin:alice release released", "admin:alice block blocked", "admin:alice rescan released"}
	if len(actions) != 5 || strings.Join(actions[2:], "|") != strings.Join(want, "|") {
		t.Fatalf("audit: %q; want two policy decisions, then %q", actions, want)
	}
	r = f.ok("audit")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 6 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[3], "quarantined→released") ||
		!strings.Contains(lines[3], "vendor confirmed the build") || !strings.Contains(lines[4], "approved→blocked") {
		t.Fatalf("audit table:\n%s", r.stdout)
	}

	// audit verify: OK, then BROKEN once a record is edited in the store.
	r = f.ok("audit", "verify")
	if !strings.Contains(r.stdout, "audit log OK: 5 records, head "+recs[4].Hash) {
		t.Fatalf("audit verify: %s", r)
	}
	f.Restart(func(db string) { admintest.EditAuditRecord(t, db, 3, "nothing to see here") })
	r = cli(t, nil, append([]string{"audit", "verify"}, f.flags...)...)
	if r.code == 0 || !strings.Contains(r.stdout, "audit log BROKEN at record 3") || !strings.Contains(r.stderr, "does not verify") {
		t.Fatalf("audit verify after an edit: %s", r)
	}
}

// TestCLIRefusals: bad input is refused with a clear message on stderr
// and a non-zero exit, and nothing changes.
func TestCLIRefusals(t *testing.T) {
	t.Parallel()
	f := newCLIFixture(t)
	auditBefore := len(f.Audit())
	wrongToken := filepath.Join(t.TempDir(), "wrong")
	emptyToken := filepath.Join(t.TempDir(), "empty")
	namedToken := filepath.Join(t.TempDir(), "named")
	for p, body := range map[string]string{wrongToken: "not-a-token\n", emptyToken: "\n", namedToken: "alice:" + admintest.AliceToken + "\n"} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// An address nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	unknown := cliRepo + "@" + string(digest.FromString("never pulled"))
	past := f.Clock.Now().AddDate(0, 0, -2).Format(time.DateOnly)

	tests := []struct {
		name string
		args []string
		// flags replaces the admin's flags when set.
		flags []string
		want  string // on stderr
	}{
		{"release without reason", []string{"release", f.unpinnedRf}, nil, "release needs --reason"},
		{"release of an unknown digest", []string{"release", unknown, "--reason", "x"}, nil, "airlock has not seen " + unknown},
		{"release in the past", []string{"release", f.unpinnedRf, "--reason", "x", "--expires", past}, nil, "is in the past"},
		{"release by tag", []string{"release", cliRepo + ":1.1", "--reason", "x"}, nil, "name the image by digest"},
		{"release of an approved image", []string{"release", f.pinnedRef, "--reason", "x"}, nil, "is approved; there is nothing to release"},
		{"malformed reference", []string{"block", "app@sha256:12", "--reason", "x"}, nil, "does not name its upstream"},
		{"block in an unknown repository", []string{"block", "nowhere/app@" + string(f.pinned), "--reason", "x"}, nil, "not served by airlock"},
		{"unblock of an image not blocked", []string{"unblock", f.unpinnedRf, "--reason", "x"}, nil, "is not blocked"},
		{"show unknown tag", []string{"images", "show", cliRepo + ":9"}, nil, "no tag " + cliRepo + ":9"},
		{"delete unknown", []string{"images", "delete", unknown}, nil, "no image"},
		{"bad state", []string{"images", "list", "--state", "rejected"}, nil, `unknown state "rejected"`},
		{"bad output", []string{"quarantine", "list", "-o", "yaml"}, nil, `unknown output format "yaml"`},
		{"wrong token", []string{"quarantine", "list"}, []string{"--server", f.Admin.URL, "--token-file", wrongToken},
			"not one of admin.tokenFile's tokens"},
		{"name:token in the token file", []string{"quarantine", "list"}, []string{"--server", f.Admin.URL, "--token-file", namedToken},
			"alone on its first line"},
		{"empty token file", []string{"quarantine", "list"}, []string{"--server", f.Admin.URL, "--token-file", emptyToken}, "holds no token"},
		{"no token file", []string{"quarantine", "list"}, []string{"--server", f.Admin.URL}, "pass --token-file FILE or set AIRLOCK_TOKEN_FILE"},
		{"server down", []string{"release", f.unpinnedRf, "--reason", "x"}, []string{"--server", dead, "--token-file", f.tokenFile},
			"cannot reach airlock's admin API at " + dead},
		{"not a URL", []string{"audit"}, []string{"--server", "ftp://x", "--token-file", f.tokenFile}, "not an http:// or https:// address"},
	}
	for _, tc := range tests {
		flags := f.flags
		if tc.flags != nil {
			flags = tc.flags
		}
		r := cli(t, nil, append(tc.args, flags...)...)
		if r.code == 0 || !strings.HasPrefix(r.stderr, "airlock: ") || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: want a non-zero exit and %q on stderr; got %s", tc.name, tc.want, r)
		}
		if r.stdout != "" {
			t.Errorf("%s: printed %q on stdout", tc.name, r.stdout)
		}
	}
	if r := cli(t, nil, append([]string{"release", f.unpinnedRf, "--reason", "x"}, "--server", dead, "--token-file", f.tokenFile)...); !strings.Contains(r.stderr, "--server") {
		t.Errorf("server down: the message does not say how to set the server: %s", r.stderr)
	}
	if n := len(f.Audit()); n != auditBefore {
		t.Fatalf("refused commands wrote %d audit records", n-auditBefore)
	}
	if got := f.pull("1.1"); got != http.StatusForbidden {
		t.Fatalf("the quarantined image pulls with %d after refused commands", got)
	}
}

// TestCLIImagesDelete removes a cached image: the next show does not find
// it, and the audit log records who deleted it and why.
func TestCLIImagesDelete(t *testing.T) {
	t.Parallel()
	f := newCLIFixture(t)
	r := f.ok("images", "delete", f.unpinnedRf, "--reason", "not wanted here")
	if r.stdout != "deleted "+f.unpinnedRf+"\n" {
		t.Fatalf("images delete printed: %s", r)
	}
	r = cli(t, nil, append([]string{"images", "show", f.unpinnedRf}, f.flags...)...)
	if r.code == 0 || !strings.Contains(r.stderr, "has not seen") {
		t.Fatalf("images show after delete: %s", r)
	}
	r = f.ok("audit", "-o", "json")
	var recs []metadata.AuditRecord
	if err := json.Unmarshal([]byte(r.stdout), &recs); err != nil || len(recs) == 0 {
		t.Fatalf("audit -o json: %v\n%s", err, r.stdout)
	}
	last := recs[len(recs)-1]
	if last.Action != "delete" || last.Actor != "admin:alice" || last.Reason != "not wanted here" || last.Digest != f.unpinned {
		t.Fatalf("last audit record: %+v", last)
	}
}

// cliSBOMs serves a fixed SBOM for one digest, as the scanner does from
// its index; every other digest is not scanned.
type cliSBOMs struct{ d digest.Digest }

func (s cliSBOMs) SBOM(_ context.Context, d digest.Digest, format string) ([]byte, error) {
	if d != s.d {
		return nil, fmt.Errorf("no index of %s: %w", d, scanner.ErrNotScanned)
	}
	return []byte(`{"sbom":"` + format + `"}`), nil
}

// TestCLIVulnerabilities: images show prints the scan and its findings,
// --sbom the SBOM in either format, and the lists name the worst
// advisories; misuse of the flags is refused before the server is asked.
func TestCLIVulnerabilities(t *testing.T) {
	t.Parallel()
	f := newCLIFixture(t)
	const repo = "hub/team/scanned"
	img := scannedImage()
	scanned, queued := digest.FromString("scanned"), digest.FromString("queued")
	for _, d := range []digest.Digest{scanned, queued} {
		_, err := f.Meta.UpdateImage(t.Context(), repo, d, f.Clock.Now(), func(rec *metadata.Image) (metadata.Change, error) {
			rec.State, rec.Tags, rec.Reasons, rec.Verdict = img.State, []string{"2.4"}, img.Reasons, img.Verdict
			rec.Scan = img.Scan
			if d == queued {
				rec.State, rec.Tags, rec.Reasons, rec.Verdict = metadata.StatePending, nil, nil, metadata.Verdict{}
				rec.Scan = &metadata.Scan{State: metadata.ScanQueued, Queued: f.Clock.Now()}
			}
			return metadata.Change{Actor: "scanner", Action: "decide"}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	f.UseSBOMs(cliSBOMs{d: scanned})
	ref := repo + "@" + string(scanned)

	r := f.ok("images", "show", repo+":2.4")
	for _, want := range []string{"Vulnerability scan:", "Distribution: Debian GNU/Linux 12 (bookworm)",
		"Findings: 4 (2 critical, 1 high, 1 unknown); 2 refused by policy; 1 waived", "CVE-2026-0001  openssl",
		"Waived:\n  CVE-2026-0003 (high) in curl: allowed by policy no-critical, until 2027-02-01 00:00:00 UTC"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("images show lacks %q:\n%s", want, r.stdout)
		}
	}
	r = f.ok("images", "show", "-o", "json", ref)
	var shown map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &shown); err != nil || len(shown["scan"].(map[string]any)["findings"].([]any)) != 4 {
		t.Fatalf("images show -o json: %v\n%s", err, r.stdout)
	}
	if r := f.ok("images", "show", "--sbom", ref); r.stdout != `{"sbom":"spdx"}`+"\n" {
		t.Fatalf("--sbom printed %q", r.stdout)
	}
	if r := f.ok("images", "show", "--sbom", "--sbom-format", "cyclonedx", repo+":2.4"); r.stdout != `{"sbom":"cyclonedx"}`+"\n" {
		t.Fatalf("--sbom --sbom-format cyclonedx printed %q", r.stdout)
	}
	r = f.ok("images", "list", "--repository", repo)
	if !strings.Contains(r.stdout, "quarantined  ") || !strings.Contains(r.stdout, "2 critical vulnerabilities: CVE-2026-00") {
		t.Errorf("images list lacks the short form:\n%s", r.stdout)
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"format without --sbom", []string{"images", "show", "--sbom-format", "cyclonedx", ref}, "--sbom-format chooses the format of --sbom; add --sbom"},
		{"--sbom with -o", []string{"images", "show", "--sbom", "-o", "json", ref}, "leave out -o"},
		{"unknown format", []string{"images", "show", "--sbom", "--sbom-format", "swid", ref}, `unknown SBOM format "swid"`},
		{"not scanned yet", []string{"images", "show", "--sbom", repo + "@" + string(queued)}, "its scan is queued"},
	} {
		r := cli(t, nil, append(tc.args, f.flags...)...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("%s: want a non-zero exit and %q on stderr; got %s", tc.name, tc.want, r)
		}
	}
}
