package clients

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Containerd is a private containerd daemon.
type Containerd struct {
	// Socket is the path of its gRPC socket.
	Socket string
	dir    string
	ctr    string
}

// StartContainerd starts containerd as root with its own root, state and
// socket, and waits until it answers.
func StartContainerd(tb testing.TB) *Containerd {
	tb.Helper()
	RequireRoot(tb)
	bin := Require(tb, "containerd", "containerd")
	ctr := Require(tb, "ctr", "containerd")
	dir := tempDir(tb, "ctd-")
	c := &Containerd{Socket: filepath.Join(dir, "c.sock"), dir: dir, ctr: ctr}
	// The CRI plugin would want a CNI setup and is not needed to pull.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Socket, c.Socket+".ttrpc")
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		tb.Fatal(err)
	}
	d := startDaemon(tb, dir, "containerd", bin, "--config", cfgPath)
	err := d.waitReady(tb.Context(), 30*time.Second, func(ctx context.Context) error {
		_, err := c.Ctr(ctx, "version")
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Ctr runs ctr against this daemon with args.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	return run(ctx, append([]string{c.ctr, "--address", c.Socket}, args...)...)
}

// Pull pulls ref with `ctr images pull --hosts-dir hostsDir`, adding extra
// flags such as "--platform", "linux/arm64" or "--all-platforms".
func (c *Containerd) Pull(ctx context.Context, hostsDir, ref string, extra ...string) (string, error) {
	args := append([]string{"images", "pull", "--hosts-dir", hostsDir}, extra...)
	return c.Ctr(ctx, append(args, ref)...)
}

// ImageDigest returns the target digest of image ref in the content store.
func (c *Containerd) ImageDigest(ctx context.Context, ref string) (string, error) {
	out, err := c.Ctr(ctx, "images", "ls", "name=="+ref)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == ref {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("image %s not in containerd's list:\n%s", ref, out)
}

// HasContent reports whether blob digest is in the content store.
func (c *Containerd) HasContent(ctx context.Context, digest string) (bool, error) {
	out, err := c.Ctr(ctx, "content", "ls", "-q")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == digest {
			return true, nil
		}
	}
	return false, nil
}

// WriteHostsDir writes a containerd hosts directory in dir that sends every
// registry in mirrors (a registry host such as "docker.io" mapped to a base
// URL such as "http://127.0.0.1:5000") to that URL for pull and resolve.
// The server line names the same URL so that containerd has no public
// registry to fall back to.
func WriteHostsDir(dir string, mirrors map[string]string) error {
	for registry, url := range mirrors {
		d := filepath.Join(dir, registry)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("hosts dir for %s: %w", registry, err)
		}
		toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", url, url)
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(toml), 0o644); err != nil {
			return fmt.Errorf("hosts.toml for %s: %w", registry, err)
		}
	}
	return nil
}
