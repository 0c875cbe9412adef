package clients

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Skopeo runs skopeo with its own policy, auth file and temporary directory.
type Skopeo struct {
	bin, dir string
}

// NewSkopeo finds skopeo and prepares its private files.
func NewSkopeo(tb testing.TB) *Skopeo {
	tb.Helper()
	bin := Require(tb, "skopeo", "skopeo")
	dir := tempDir(tb, "skopeo-")
	// An explicit policy keeps the test independent of /etc/containers.
	policy := `{"default":[{"type":"insecureAcceptAnything"}]}`
	if err := os.WriteFile(filepath.Join(dir, "policy.json"), []byte(policy), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth.json"), []byte(`{"auths":{}}`), 0o600); err != nil {
		tb.Fatal(err)
	}
	return &Skopeo{bin: bin, dir: dir}
}

// Run runs skopeo with global args first (e.g. "--registries-conf", f)
// and then the command and its args.
func (s *Skopeo) Run(ctx context.Context, args ...string) (string, error) {
	argv := []string{s.bin, "--policy", filepath.Join(s.dir, "policy.json"), "--tmpdir", s.dir}
	return run(ctx, append(argv, args...)...)
}

// CopyToDir copies src (e.g. "docker://docker.io/library/app:v1") into a
// new dir: directory under parent and returns that directory. With a
// non-empty registriesConf the copy resolves src through it.
func (s *Skopeo) CopyToDir(ctx context.Context, registriesConf, src, dst string, extra ...string) (string, error) {
	var args []string
	if registriesConf != "" {
		args = append(args, "--registries-conf", registriesConf)
	}
	args = append(args, "copy", "--src-authfile", filepath.Join(s.dir, "auth.json"))
	args = append(args, extra...)
	return s.Run(ctx, append(args, src, "dir:"+dst)...)
}

// Inspect runs `skopeo inspect --raw` on an insecure (plain HTTP) registry
// reference and returns the raw manifest.
func (s *Skopeo) Inspect(ctx context.Context, ref string) (string, error) {
	return s.Run(ctx, "inspect", "--raw", "--tls-verify=false",
		"--authfile", filepath.Join(s.dir, "auth.json"), ref)
}

// WriteRegistriesConf writes a registries.conf to path whose entries send
// each registry prefix in mirrors (e.g. "docker.io") to a mirror location
// (e.g. "127.0.0.1:5000/dockerhub") spoken to over plain HTTP.
func WriteRegistriesConf(path string, mirrors map[string]string) error {
	prefixes := make([]string, 0, len(mirrors))
	for p := range mirrors {
		prefixes = append(prefixes, p)
	}
	sort.Strings(prefixes)
	var b strings.Builder
	b.WriteString("unqualified-search-registries = []\n")
	for _, p := range prefixes {
		fmt.Fprintf(&b, "\n[[registry]]\nprefix = %q\nlocation = %q\n\n[[registry.mirror]]\nlocation = %q\ninsecure = true\n",
			p, p, mirrors[p])
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write registries.conf: %w", err)
	}
	return nil
}
