package integration

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// pullAuthUsers are the accounts of the tests' htpasswd file. The vendor
// upstream is restricted to alice; bob may pull only from the others.
var pullAuthUsers = map[string]string{"alice": "alice-Secret-1", "bob": "bob-Secret-2"}

// pullAuthEnv is an airlock requiring credentials, in front of a public
// hub (the default upstream, docker.io) and a vendor (vendor.example)
// restricted to alice.
type pullAuthEnv struct {
	al          *airlocktest.Airlock
	hub, vendor *upstreamtest.Upstream
	app, tool   upstreamtest.Image
	htpasswd    string
}

// writePullAuthHtpasswd writes users as `htpasswd -B` does ($2y$ bcrypt).
func writePullAuthHtpasswd(t *testing.T, path string, users map[string]string) {
	t.Helper()
	var b strings.Builder
	for user, pass := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:$2y$%s\n", user, strings.TrimPrefix(string(h), "$2a$"))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

func startPullAuth(t *testing.T) *pullAuthEnv {
	t.Helper()
	e := &pullAuthEnv{
		hub:      upstreamtest.New(t, upstreamtest.Options{}),
		vendor:   upstreamtest.New(t, upstreamtest.Options{}),
		htpasswd: filepath.Join(t.TempDir(), "htpasswd"),
	}
	e.app = e.hub.PushImage(t, "library/app", "v1", 32<<10, 2)
	e.tool = e.vendor.PushImage(t, "vendor/tool", "v1", 32<<10, 2)
	writePullAuthHtpasswd(t, e.htpasswd, pullAuthUsers)
	e.al = e2eStart(t, airlocktest.Config{
		Upstreams: []airlocktest.Upstream{
			e2eDockerHub(e.hub),
			{Name: "vendor", URL: e.vendor.URL, Aliases: []string{"vendor.example"}, Retry: airlocktest.FastRetry()},
		},
		PullAuth: &airlocktest.PullAuth{Htpasswd: e.htpasswd, Realm: "airlock-e2e",
			Upstreams: map[string][]string{"vendor": {"alice"}}},
	})
	return e
}

func pullAuthBasic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// TestPullAuthHTTP checks the protocol the clients below rely on, against
// the built binary: the challenge on /v2/, OCI errors, the restriction on
// every route, and a SIGHUP that changes a password.
func TestPullAuthHTTP(t *testing.T) {
	t.Parallel()
	e := startPullAuth(t)
	alice, bob := pullAuthBasic("alice", pullAuthUsers["alice"]), pullAuthBasic("bob", pullAuthUsers["bob"])

	r := e2eMustGet(t, http.StatusUnauthorized, e.al.URL+"/v2/")
	if got := r.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, `Basic realm="airlock-e2e"`) {
		t.Errorf("WWW-Authenticate = %q, want a Basic challenge for realm airlock-e2e", got)
	}
	if codes := e2eErrorCodes(r.Body); len(codes) != 1 || codes[0] != "UNAUTHORIZED" {
		t.Errorf("error codes = %v, want [UNAUTHORIZED]", codes)
	}
	e2eMustGet(t, http.StatusUnauthorized, e.al.URL+"/v2/", "Authorization", pullAuthBasic("alice", "wrong"))
	e2eMustGet(t, http.StatusOK, e.al.URL+"/v2/", "Authorization", alice)
	e2eMustGet(t, http.StatusOK, e.al.URL+"/healthz")

	vendorRoutes := []string{
		e.al.URL + "/v2/vendor/vendor/tool/manifests/v1",
		e.al.URL + "/v2/vendor/tool/manifests/v1?ns=vendor.example",
		e.al.URL + "/v2/vendor/vendor/tool/blobs/" + e.tool.Layers[0].String(),
	}
	for _, u := range vendorRoutes {
		r := e2eMustGet(t, http.StatusForbidden, u, "Authorization", bob, "Accept", manifestAccept)
		if codes := e2eErrorCodes(r.Body); len(codes) != 1 || codes[0] != "DENIED" {
			t.Errorf("GET %s as bob: codes %v, want [DENIED]", u, codes)
		}
	}
	if n := e.vendor.Total(); n != 0 {
		t.Errorf("the vendor upstream saw %d requests for a user not allowed there, want 0", n)
	}
	for _, u := range vendorRoutes {
		e2eMustGet(t, http.StatusOK, u, "Authorization", alice, "Accept", manifestAccept)
	}
	e2eMustGet(t, http.StatusOK, e.al.URL+"/v2/library/app/manifests/v1", "Authorization", bob, "Accept", manifestAccept)

	// Each request's log line names who pulled. A line is written once its
	// response is out, so wait for it rather than read at once.
	for _, user := range []string{"alice", "bob"} {
		if _, err := e.al.WaitLog(t.Context(), func(l airlocktest.LogLine) bool {
			return l.Fields["msg"] == "request" && l.Fields["user"] == user
		}); err != nil {
			t.Errorf("no request log line names user %s: %v", user, err)
		}
	}

	start := e.al.LogsContaining("airlock serving")
	if len(start) == 0 || !strings.Contains(fmt.Sprint(start[0].Fields["pull_auth"]), e.htpasswd) {
		t.Errorf("start-up line does not say pulls need credentials: %v", start)
	}

	// SIGHUP re-reads the htpasswd file: a changed password applies, and a
	// file airlock cannot use is refused with its line, keeping the old.
	sighup := func(want string) {
		t.Helper()
		before := len(e.al.LogsContaining(want))
		if err := e.al.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); len(e.al.LogsContaining(want)) == before; {
			if time.Now().After(deadline) {
				t.Fatalf("no %q log line after SIGHUP", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	writePullAuthHtpasswd(t, e.htpasswd, map[string]string{"alice": "rotated-pw", "bob": pullAuthUsers["bob"]})
	sighup("configuration reloaded")
	e2eMustGet(t, http.StatusUnauthorized, e.al.URL+"/v2/", "Authorization", alice)
	e2eMustGet(t, http.StatusOK, e.al.URL+"/v2/", "Authorization", pullAuthBasic("alice", "rotated-pw"))

	if err := os.WriteFile(e.htpasswd, []byte("alice:$apr1$abcdefgh$0123456789abcdefghijkl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sighup("configuration reload refused")
	if refused := e.al.LogsContaining("configuration reload refused"); !strings.Contains(refused[len(refused)-1].Raw, e.htpasswd+":1:") {
		t.Errorf("refusal does not name the htpasswd line: %s", refused[len(refused)-1].Raw)
	}
	e2eMustGet(t, http.StatusOK, e.al.URL+"/v2/", "Authorization", pullAuthBasic("alice", "rotated-pw"))

	for _, l := range e.al.Logs() {
		for _, secret := range []string{pullAuthUsers["alice"], pullAuthUsers["bob"], "rotated-pw", strings.TrimPrefix(alice, "Basic ")} {
			if strings.Contains(l.Raw, secret) {
				t.Errorf("airlock logged a secret: %s", l.Raw)
			}
		}
	}
}

// TestPullAuthDocker logs in and pulls with the docker CLI and daemon.
func TestPullAuthDocker(t *testing.T) {
	t.Parallel()
	e := startPullAuth(t)
	ctd := clients.StartContainerd(t)
	dkd := clients.StartDockerd(t, ctd)
	ctx := t.Context()
	hubRef, toolRef := e.al.Host+"/dockerhub/library/app:v1", e.al.Host+"/vendor/vendor/tool:v1"

	// Each refusal must be airlock's, not some other failure.
	refused := func(what string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: err = %v, want a failure saying %q", what, err, want)
		}
	}
	_, err := dkd.Pull(ctx, hubRef)
	refused("docker pull without docker login", err, "no basic auth credentials")
	_, err = dkd.Docker(ctx, "login", "-u", "alice", "-p", "wrong-password", e.al.Host)
	refused("docker login with a wrong password", err, "401 Unauthorized")
	if _, err := dkd.Docker(ctx, "login", "-u", "bob", "-p", pullAuthUsers["bob"], e.al.Host); err != nil {
		t.Fatalf("docker login as bob: %v", err)
	}
	_, err = dkd.Pull(ctx, toolRef)
	refused("docker pull by bob from the vendor upstream restricted to alice", err, `denied: user "bob" may not pull from upstream "vendor"`)
	if _, err := dkd.Docker(ctx, "login", "-u", "alice", "-p", pullAuthUsers["alice"], e.al.Host); err != nil {
		t.Fatalf("docker login as alice: %v", err)
	}
	for _, tc := range []struct {
		ref string
		img upstreamtest.Image
	}{{hubRef, e.app}, {toolRef, e.tool}} {
		if _, err := dkd.Pull(ctx, tc.ref); err != nil {
			t.Fatalf("docker pull %s after docker login: %v", tc.ref, err)
		}
		digests, err := dkd.RepoDigests(ctx, tc.ref)
		if err != nil || len(digests) == 0 || !strings.HasSuffix(digests[0], "@"+tc.img.Digest.String()) {
			t.Fatalf("repo digests of %s = %v, %v; want one ending in %s", tc.ref, digests, err, tc.img.Digest)
		}
	}
}

// writeAuthHostsDir writes a containerd hosts directory sending each
// registry to url, with authorization (if any) as a static header on every
// request, as hosts.toml allows.
func writeAuthHostsDir(t *testing.T, url, authorization string, registries ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, reg := range registries {
		toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", url, url)
		if authorization != "" {
			toml += fmt.Sprintf("\n[host.%q.header]\n  Authorization = %q\n", url, authorization)
		}
		if err := os.MkdirAll(filepath.Join(dir, reg), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, reg, "hosts.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestPullAuthContainerd pulls with containerd, credentials once as a
// hosts.toml header and once as pull credentials (--user, the path CRI
// credentials from an imagePullSecret take), on the ?ns= routes.
func TestPullAuthContainerd(t *testing.T) {
	t.Parallel()
	e := startPullAuth(t)
	ctd := clients.StartContainerd(t)
	ctx := t.Context()
	hubRef, toolRef := "docker.io/library/app:v1", "vendor.example/vendor/tool:v1"
	hosts := func(auth string) string {
		return writeAuthHostsDir(t, e.al.URL, auth, "docker.io", "vendor.example")
	}
	plain := hosts("")

	for _, tc := range []struct {
		name, hostsDir, ref string
		flags               []string
		want                string
	}{
		{"no credentials", plain, hubRef, nil, "401 Unauthorized"},
		{"header with a wrong password", hosts(pullAuthBasic("alice", "wrong-password")), hubRef, nil, "401 Unauthorized"},
		{"user with a wrong password", plain, hubRef, []string{"--user", "alice:wrong-password"}, "401 Unauthorized"},
		{"header of a user not allowed on the vendor", hosts(pullAuthBasic("bob", pullAuthUsers["bob"])), toolRef, nil, "403 Forbidden"},
		{"user not allowed on the vendor", plain, toolRef, []string{"--user", "bob:" + pullAuthUsers["bob"]}, "403 Forbidden"},
	} {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			out, err := ctd.Pull(ctx, tc.hostsDir, tc.ref, tc.flags...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("pull: err = %v, want a failure saying %q\n%s", err, tc.want, out)
			}
		})
	}
	if _, err := ctd.ImageDigest(ctx, toolRef); err == nil {
		t.Fatal("the vendor image is in containerd after refused pulls")
	}

	header := hosts(pullAuthBasic("alice", pullAuthUsers["alice"]))
	for _, tc := range []struct {
		name, hostsDir, ref string
		flags               []string
		img                 upstreamtest.Image
	}{
		{"header, default upstream", header, hubRef, nil, e.app},
		{"header, restricted upstream", header, toolRef, nil, e.tool},
	} {
		t.Run("allowed/"+tc.name, func(t *testing.T) {
			if _, err := ctd.Pull(ctx, tc.hostsDir, tc.ref, tc.flags...); err != nil {
				t.Fatalf("pull: %v", err)
			}
			if got, err := ctd.ImageDigest(ctx, tc.ref); err != nil || got != tc.img.Digest.String() {
				t.Fatalf("image digest = %q, %v; want %s", got, err, tc.img.Digest)
			}
		})
	}
	// Pull credentials, as CRI passes them, into a fresh containerd so no
	// content is already local.
	ctd2 := clients.StartContainerd(t)
	for _, ref := range []string{hubRef, toolRef} {
		if _, err := ctd2.Pull(ctx, plain, ref, "--user", "alice:"+pullAuthUsers["alice"]); err != nil {
			t.Fatalf("pull %s with --user: %v", ref, err)
		}
	}
	if got, err := ctd2.ImageDigest(ctx, toolRef); err != nil || got != e.tool.Digest.String() {
		t.Fatalf("image digest with --user = %q, %v; want %s", got, err, e.tool.Digest)
	}
}

// TestPullAuthSkopeo copies and inspects with skopeo --src-creds / --creds.
func TestPullAuthSkopeo(t *testing.T) {
	t.Parallel()
	e := startPullAuth(t)
	sk := clients.NewSkopeo(t)
	ctx := t.Context()
	tool := "docker://" + e.al.Host + "/vendor/vendor/tool:v1"
	copyTo := func(src string, creds ...string) (string, string, error) {
		dst := filepath.Join(t.TempDir(), "img")
		extra := []string{"--src-tls-verify=false"}
		if len(creds) > 0 {
			extra = append(extra, "--src-creds", creds[0])
		}
		out, err := sk.CopyToDir(ctx, "", src, dst, extra...)
		return dst, out, err
	}
	for _, tc := range []struct{ name, creds, want string }{
		{"wrong password", "alice:wrong-password", "unauthorized: invalid user name or password"},
		{"unknown user", "mallory:" + pullAuthUsers["alice"], "unauthorized: invalid user name or password"},
		{"user not allowed on the vendor", "bob:" + pullAuthUsers["bob"], "denied: user"}, // skopeo escapes the quotes
		{"no credentials", "", "unauthorized"},
	} {
		var creds []string
		if tc.creds != "" {
			creds = append(creds, tc.creds)
		}
		if _, out, err := copyTo(tool, creds...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("skopeo copy with %s: err = %v, want a failure saying %q\n%s", tc.name, err, tc.want, out)
		}
	}

	dst, _, err := copyTo(tool, "alice:"+pullAuthUsers["alice"])
	if err != nil {
		t.Fatalf("skopeo copy --src-creds: %v", err)
	}
	for _, b := range e.tool.Blobs() {
		data, err := os.ReadFile(filepath.Join(dst, b.Hex))
		if err != nil || sha256Of(data) != b {
			t.Errorf("blob %s: %v, digest %s", b, err, sha256Of(data))
		}
	}
	raw, err := sk.Run(ctx, "inspect", "--raw", "--tls-verify=false", "--creds", "bob:"+pullAuthUsers["bob"],
		"docker://"+e.al.Host+"/dockerhub/library/app:v1")
	if err != nil || raw != string(e.app.Manifest) {
		t.Fatalf("skopeo inspect --creds: %v\n%s", err, raw)
	}
	if out, err := sk.Run(ctx, "inspect", "--raw", "--tls-verify=false", "--creds", "bob:wrong-password",
		"docker://"+e.al.Host+"/dockerhub/library/app:v1"); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Fatalf("skopeo inspect with a wrong password: err = %v, want unauthorized\n%s", err, out)
	}
}
