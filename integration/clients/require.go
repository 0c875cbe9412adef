package clients

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require returns the path of program, or ends the test: fatally in CI,
// with a skip naming aptPackage elsewhere.
func Require(tb testing.TB, program, aptPackage string) string {
	tb.Helper()
	p, err := exec.LookPath(program)
	if err == nil {
		return p
	}
	if InCI() {
		tb.Fatalf("%s is not installed (CI=true forbids skipping): apt-get install -y %s", program, aptPackage)
	}
	tb.Skipf("%s is not installed: apt-get install -y %s", program, aptPackage)
	return ""
}

// RequireRoot ends the test unless it runs as root, which the daemons need
// for mounts, cgroups and namespaces: fatally in CI, with a skip elsewhere.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		tb.Fatal("this test starts containerd/dockerd and must run as root (CI=true forbids skipping)")
	}
	tb.Skip("this test starts containerd/dockerd and must run as root")
}

// loopbackOnlyEnv is the environment for client processes: any request to a
// host other than loopback goes to a proxy on a closed loopback port.
func loopbackOnlyEnv(extra ...string) []string {
	const closed = "http://127.0.0.1:9"
	env := append(os.Environ(),
		"HTTP_PROXY="+closed, "HTTPS_PROXY="+closed, "http_proxy="+closed, "https_proxy="+closed,
		"NO_PROXY=127.0.0.1,localhost,::1", "no_proxy=127.0.0.1,localhost,::1",
	)
	return append(env, extra...)
}
