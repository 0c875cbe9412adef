package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/airlock-registry/airlock/internal/freeport"
)

// child is a server process the benchmark started and measures through
// /proc/<pid>.
type child struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
	// data is an airlock's storage.path; "" for the ceiling.
	data string
}

// stored reports whether the airlock c has committed blob digest to its
// store: its fills go on after their clients have the last byte, to make
// the blob durable.
func (c *child) stored(digest string) bool {
	algo, hex, ok := strings.Cut(digest, ":")
	if c.data == "" || !ok || len(hex) < 2 {
		return false
	}
	_, err := os.Stat(filepath.Join(c.data, "blobs", "blobs", algo, hex[:2], hex, "data"))
	return err == nil
}

// stop sends SIGTERM and waits, killing after ten seconds.
func (c *child) stop() {
	if c == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// cpu returns the user plus system CPU time the process has used.
func (c *child) cpu() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of %s: %w", c.name, err)
	}
	// The command name in field 2 may hold spaces; fields are counted
	// from the last ')'. utime and stime are fields 14 and 15, in clock
	// ticks of 1/100 s on Linux.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc stat line for %s: %q", c.name, s)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse CPU time of %s: %w", c.name, err)
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// rss returns the process's resident set size in bytes.
func (c *child) rss() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("read memory of %s: %w", c.name, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS of %s: %w", c.name, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc status of %s", c.name)
}

// tail returns the end of the child's log, for error messages.
func (c *child) tail() string {
	b, _ := os.ReadFile(c.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func startChild(name, logPath string, cmd *exec.Cmd) (*child, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() {
		_ = cmd.Wait()
		lf.Close()
		close(c.exited)
	}()
	return c, nil
}

// waitHTTP polls url until it answers 200, the child exits or timeout.
func waitHTTP(ctx context.Context, c *child, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited before it was ready; log:\n%s", c.name, c.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready at %s after %v; log:\n%s", c.name, url, timeout, c.tail())
}

// freeAddr picks a free loopback port that no other pick in this run has
// returned (see package freeport).
func freeAddr() (string, error) { return freeport.Addr() }

// buildAirlock compiles ./cmd/airlock of the enclosing module into dir.
func buildAirlock(ctx context.Context, dir string) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root with `go env GOMOD`: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if root == "." || root == "" || root == "/dev" {
		return "", errors.New("run the benchmark inside the airlock module (go env GOMOD is empty)")
	}
	out := filepath.Join(dir, "airlock")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/airlock")
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/airlock in %s: %w\n%s", root, err, msg)
	}
	return out, nil
}

// airlockConfig is the YAML airlock is started with: the origin as the
// default upstream, the same origin again as upstream "pinned" under a pin
// policy (scenario 11), signature policies over origin/bench/<kind>/*
// (scenario 12), and a tag TTL longer than the run. Every other scenario
// pulls through repositories of the default upstream that no policy
// matches.
const airlockConfig = `listen: %q
storage:
  path: %q
admin:
  listen: %q
cache:
  tagTTL: 10m
log:
  level: warn
upstreams:
  - name: origin
    url: %q
    default: true
  - name: ` + pinnedUpstream + `
    url: %q
policies:
  - name: bench-pinned
    match: ["` + pinnedUpstream + `/*"]
    mode: enforce
    pins: %q
  - name: bench-` + sigKey + `
    match: ["origin/bench/` + sigKey + `/*"]
    mode: enforce
    signature:
      keys: [%q]
  - name: bench-` + sigKeyless + `
    match: ["origin/bench/` + sigKeyless + `/*"]
    mode: enforce
    signature:
      keyless:
        - issuer: "` + keylessIssuer + `"
          subject: "` + keylessSubject + `"
      trustedRoot: %q
  - name: bench-` + sigNotation + `
    match: ["origin/bench/` + sigNotation + `/*"]
    mode: enforce
    signature:
      notation:
        trustStore: [%q]
        trustedIdentities: [%q]
`

// pinnedUpstream names the upstream the pin policy governs.
const pinnedUpstream = "pinned"

// startAirlock writes a configuration under dir and starts bin serve on
// it, returning once /readyz answers. pins are the lines of the policy's
// pin file; sg holds the signature policies' trust material.
func startAirlock(ctx context.Context, bin, dir string, o *origin, pins []string, sg *signers) (*child, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	admin, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	pinFile := filepath.Join(dir, "pins.txt")
	if err := os.WriteFile(pinFile, []byte(strings.Join(pins, "\n")+"\n"), 0o600); err != nil {
		return nil, "", err
	}
	cfgPath := filepath.Join(dir, "airlock.yaml")
	data := filepath.Join(dir, "airlock-data")
	cfg := fmt.Sprintf(airlockConfig, addr, data, admin, o.URL, o.PinnedURL, pinFile,
		sg.keyPath, sg.rootPath, sg.caPath, sg.pki.Identity())
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, "", err
	}
	c, err := startChild("airlock", filepath.Join(dir, "airlock.log"), exec.Command(bin, "serve", "--config", cfgPath))
	if err != nil {
		return nil, "", err
	}
	c.data = data
	url := "http://" + addr
	if err := waitHTTP(ctx, c, url+"/readyz", 60*time.Second); err != nil {
		c.stop()
		return nil, "", err
	}
	return c, url, nil
}

// ceilingFlag makes the benchmark binary serve one file with a bare
// http.ServeContent instead of benchmarking: the ceiling runs as its own
// process so its CPU time is measured the same way as airlock's.
const ceilingFlag = "serve-file"

// startCeiling re-executes this binary in ceiling mode for file. The same
// process answers manifest requests with manifestFile's bytes from memory:
// the in-memory registry of scenario 3, in its own process like airlock.
func startCeiling(ctx context.Context, dir, file, manifestFile string) (*child, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("find the benchmark binary to start the ceiling: %w", err)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	c, err := startChild("ceiling", filepath.Join(dir, "ceiling.log"),
		exec.Command(self, "-"+ceilingFlag, file, "-manifest", manifestFile, "-listen", addr))
	if err != nil {
		return nil, "", err
	}
	url := "http://" + addr
	if err := waitHTTP(ctx, c, url+"/", 30*time.Second); err != nil {
		c.stop()
		return nil, "", err
	}
	return c, url, nil
}

// serveFile is the ceiling: every path answers with the file's bytes by
// http.ServeContent, which uses sendfile for an *os.File; except paths
// with /manifests/, answered with manifestFile's bytes held in memory.
func serveFile(file, manifestFile, addr string) error {
	var m []byte
	if manifestFile != "" {
		var err error
		if m, err = os.ReadFile(manifestFile); err != nil {
			return err
		}
	}
	sum := sha256.Sum256(m)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	size := strconv.Itoa(len(m))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			h := w.Header()
			h.Set("Content-Type", mediaManifest)
			h.Set("Docker-Content-Digest", digest)
			h.Set("Content-Length", size)
			_, _ = w.Write(m)
			return
		}
		f, err := os.Open(file)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		http.ServeContent(w, r, "", time.Time{}, f)
	})}
	return srv.Serve(l)
}
