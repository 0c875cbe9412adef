package clients

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Dockerd is a private Docker daemon using a private containerd.
type Dockerd struct {
	// Host is the daemon's address for `docker -H`.
	Host   string
	docker string
	config string
}

// StartDockerd starts dockerd on top of ctd with the vfs storage driver and
// no networking, so it needs neither overlay support nor iptables, and
// waits until it answers. Each mirror (e.g. "http://127.0.0.1:5000") is
// passed as --registry-mirror.
func StartDockerd(tb testing.TB, ctd *Containerd, mirrors ...string) *Dockerd {
	tb.Helper()
	RequireRoot(tb)
	bin := Require(tb, "dockerd", "docker.io")
	cli := Require(tb, "docker", "docker.io")
	dir := tempDir(tb, "dkd-")
	d := &Dockerd{Host: "unix://" + filepath.Join(dir, "d.sock"), docker: cli, config: filepath.Join(dir, "cli")}
	daemonJSON := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(daemonJSON, []byte("{}\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.MkdirAll(d.config, 0o700); err != nil {
		tb.Fatal(err)
	}
	argv := []string{bin,
		"--config-file", daemonJSON,
		"--storage-driver=vfs", "--iptables=false", "--ip-masq=false", "--bridge=none",
		"--containerd", ctd.Socket,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"-H", d.Host,
	}
	for _, m := range mirrors {
		argv = append(argv, "--registry-mirror", m)
	}
	p := startDaemon(tb, dir, "dockerd", argv...)
	err := p.waitReady(tb.Context(), 60*time.Second, func(ctx context.Context) error {
		_, err := d.Docker(ctx, "version")
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// Docker runs the docker CLI against this daemon with args.
func (d *Dockerd) Docker(ctx context.Context, args ...string) (string, error) {
	return run(ctx, append([]string{d.docker, "--config", d.config, "-H", d.Host}, args...)...)
}

// Pull runs `docker pull ref`.
func (d *Dockerd) Pull(ctx context.Context, ref string) (string, error) {
	return d.Docker(ctx, "pull", ref)
}

// RepoDigests returns the repository digests docker recorded for ref, such
// as "127.0.0.1:5000/dockerhub/library/app@sha256:…".
func (d *Dockerd) RepoDigests(ctx context.Context, ref string) ([]string, error) {
	out, err := d.Docker(ctx, "image", "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", ref)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// Env is the environment that points a docker CLI run by a script at this
// daemon, with this daemon's private CLI configuration.
func (d *Dockerd) Env() []string {
	return []string{"DOCKER_HOST=" + d.Host, "DOCKER_CONFIG=" + d.config}
}
