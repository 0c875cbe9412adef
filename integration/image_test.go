package integration

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// TestContainerImage builds the image with scripts/image.sh (what `make
// image` runs) on a private dockerd, runs it as its non-root user with a
// mounted configuration, and pulls through it.
func TestContainerImage(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	img := up.PushImage(t, "library/app", "1", 32<<10, 2)
	ctd := clients.StartContainerd(t)
	dkd := clients.StartDockerd(t, ctd)

	// The build compiles airlock static and -trimpath. scripts/test.sh
	// vets with those flags, so under it the dependencies are compiled
	// already; run alone with an empty build cache, it compiles every
	// package (it took more than 8 minutes once on 2 loaded cores).
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	root := moduleRoot(t)
	build := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "image.sh"), "airlock:e2e")
	build.Dir = root
	build.Env = append(os.Environ(), dkd.Env()...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("scripts/image.sh: %v\n%s", err, out)
	}

	// The container runs as 65532 and reads a configuration mounted from
	// the host, as it would from a ConfigMap.
	conf := t.TempDir()
	if err := os.Chmod(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	reg, admin := freeLoopbackAddr(t), freeLoopbackAddr(t)
	yaml := "listen: " + reg + "\nadmin: {listen: " + admin + "}\nstorage: {path: /var/lib/airlock}\n" +
		"upstreams:\n  - {name: dockerhub, url: " + up.URL + ", aliases: [docker.io], default: true}\n"
	if err := os.WriteFile(filepath.Join(conf, "airlock.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	name := "airlock-e2e-" + strings.ReplaceAll(filepath.Base(conf), ".", "")
	if out, err := dkd.Docker(ctx, "run", "-d", "--name", name, "--network", "host",
		"-v", conf+":/etc/airlock:ro", "airlock:e2e", "serve", "--config", "/etc/airlock/airlock.yaml"); err != nil {
		t.Fatalf("docker run: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := dkd.Docker(context.Background(), "logs", name)
			t.Logf("container log:\n%s", logs)
		}
		_, _ = dkd.Docker(context.Background(), "rm", "-f", name)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := e2eGet(ctx, "http://"+reg+"/readyz")
		if err == nil && r.Status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container never became ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	e2ePullHTTP(t, up, "http://"+reg+"/v2/library/app", "1", img)
	if user, err := dkd.Docker(ctx, "inspect", "--format", "{{.Config.User}}", name); err != nil || strings.TrimSpace(user) != "65532:65532" {
		t.Errorf("container user = %q, %v; want 65532:65532", user, err)
	}
}

// moduleRoot is the directory of airlock's go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port free right now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
