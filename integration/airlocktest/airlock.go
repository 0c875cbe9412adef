package airlocktest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/airlock-registry/airlock/internal/freeport"
)

// Airlock is one airlock process and the data directory it keeps across
// restarts.
type Airlock struct {
	// URL is the registry listener, "http://127.0.0.1:PORT"; Host is the
	// same without the scheme, for image references.
	URL, Host string
	// AdminURL is the admin listener serving /metrics.
	AdminURL string
	// DataDir is storage.path; ConfigPath the YAML file airlock reads.
	DataDir, ConfigPath string

	bin string
	env []string
	tb  testing.TB
	log *logBook

	mu   sync.Mutex
	proc *process
}

// process is one run of the binary.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
}

// Start writes cfg as airlock's configuration on free loopback ports, starts
// the binary and waits until /readyz answers 200. Cleanup stops it.
func (b *Binary) Start(tb testing.TB, cfg Config) *Airlock {
	tb.Helper()
	dir := tb.TempDir()
	a := &Airlock{
		DataDir:    filepath.Join(dir, "data"),
		ConfigPath: filepath.Join(dir, "airlock.yaml"),
		bin:        b.Path,
		env:        cfg.Env,
		tb:         tb,
		log:        &logBook{},
	}
	regAddr, adminAddr := freeAddr(tb), freeAddr(tb)
	a.URL, a.Host, a.AdminURL = "http://"+regAddr, regAddr, "http://"+adminAddr
	doc := a.writeConfig(tb, cfg)
	tb.Cleanup(func() {
		if err := a.Stop(); err != nil {
			tb.Errorf("stop airlock: %v", err)
		}
		if races := a.log.matching("WARNING: DATA RACE"); len(races) > 0 {
			tb.Errorf("airlock reported %d data races; see its log", len(races))
		}
		if tb.Failed() {
			if cur, err := os.ReadFile(a.ConfigPath); err == nil {
				doc = cur // the last Reconfigure's
			}
			tb.Logf("airlock config:\n%s\nairlock log (last lines):\n%s", doc, a.log.tail(60))
		}
	})
	if err := a.start(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	return a
}

// writeConfig writes cfg as airlock's configuration file, on a's
// addresses and data directory, and returns the document.
func (a *Airlock) writeConfig(tb testing.TB, cfg Config) []byte {
	tb.Helper()
	var f file
	f.Listen, f.Admin.Listen, f.Storage.Path = a.Host, strings.TrimPrefix(a.AdminURL, "http://"), a.DataDir
	f.Cache.TagTTL = cfg.TagTTL
	if f.Cache.TagTTL == "" {
		f.Cache.TagTTL = "5m"
	}
	f.Log.Level, f.Log.Format = "debug", "json"
	f.Upstreams = cfg.Upstreams
	f.Tracing = cfg.Tracing
	f.Auth = cfg.PullAuth
	f.Policies, f.Alerts, f.Admin.TokenFile = cfg.Policies, cfg.Alerts, cfg.AdminTokenFile
	f.Shutdown.ReadyDelay = cfg.ReadyDelay
	f.Cache.MaxSize, f.Cache.EvictInterval = cfg.MaxSize, cfg.EvictInterval
	f.Cache.MaxBlobSize = cfg.MaxBlobSize
	f.Scanner = cfg.Scanner
	doc, err := yaml.Marshal(&f)
	if err != nil {
		tb.Fatalf("encode airlock config: %v", err)
	}
	if err := os.WriteFile(a.ConfigPath, doc, 0o600); err != nil {
		tb.Fatal(err)
	}
	return doc
}

// Reconfigure rewrites airlock's configuration file from cfg (on the same
// addresses and data directory; cfg.Env is ignored), sends SIGHUP and
// waits until airlock logs that it reloaded, failing the test if it
// refused the file instead.
func (a *Airlock) Reconfigure(tb testing.TB, cfg Config) {
	tb.Helper()
	seen := len(a.Logs())
	a.writeConfig(tb, cfg)
	if err := a.Signal(syscall.SIGHUP); err != nil {
		tb.Fatalf("reload airlock: %v", err)
	}
	line, err := a.WaitLogFrom(tb.Context(), seen, 30*time.Second, func(l LogLine) bool {
		return l.Msg() == "configuration reloaded" || strings.HasPrefix(l.Msg(), "configuration reload refused")
	})
	if err != nil {
		tb.Fatalf("airlock did not reload after SIGHUP: %v", err)
	}
	if line.Msg() != "configuration reloaded" {
		tb.Fatalf("airlock refused the new configuration: %s", line.Raw)
	}
}

func (a *Airlock) start(ctx context.Context) error {
	cmd := exec.Command(a.bin, "serve", "--config", a.ConfigPath)
	if len(a.env) > 0 {
		cmd.Env = append(os.Environ(), a.env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start airlock: %w", err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	copied := make(chan struct{})
	go func() {
		a.log.read(stderr)
		close(copied)
	}()
	go func() {
		// Wait only after the log is drained: Wait closes the pipe.
		<-copied
		p.err = cmd.Wait()
		close(p.exited)
	}()
	a.mu.Lock()
	a.proc = p
	a.mu.Unlock()
	return a.waitReady(ctx, p, 60*time.Second)
}

// waitReady polls /readyz until it answers 200.
func (a *Airlock) waitReady(ctx context.Context, p *process, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("airlock exited before it was ready (%v); log:\n%s", p.err, a.log.tail(40))
		case <-ctx.Done():
			return fmt.Errorf("airlock not ready on %s/readyz after %v (last: %v); log:\n%s", a.URL, timeout, err, a.log.tail(40))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM and waits for the exit, killing after 15 seconds. It
// returns an error when airlock had to be killed or exited with a failure.
// Stopping a stopped airlock does nothing.
func (a *Airlock) Stop() error {
	p := a.current()
	if p == nil {
		return nil
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if p.err != nil {
			return fmt.Errorf("airlock exited with %w after SIGTERM", p.err)
		}
		return nil
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return errors.New("airlock ignored SIGTERM for 15s and was killed")
	}
}

// Kill ends airlock with SIGKILL, as a crash would, and waits for the exit.
func (a *Airlock) Kill() {
	p := a.current()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Restart stops airlock if it runs and starts it again on the same
// configuration, ports and data directory.
func (a *Airlock) Restart(tb testing.TB) {
	tb.Helper()
	if err := a.Stop(); err != nil {
		tb.Fatalf("stop before restart: %v", err)
	}
	if err := a.start(tb.Context()); err != nil {
		tb.Fatalf("restart: %v", err)
	}
}

// Running reports whether the process is alive.
func (a *Airlock) Running() bool {
	p := a.current()
	if p == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (a *Airlock) current() *process {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.proc
}

// freeAddr finds a free loopback port that no other pick in this test
// process has returned (see package freeport).
func freeAddr(tb testing.TB) string {
	tb.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		tb.Fatal(err)
	}
	return addr
}

// Signal sends sig to the running airlock (SIGHUP to reload, for example).
func (a *Airlock) Signal(sig os.Signal) error {
	p := a.current()
	if p == nil {
		return errors.New("airlock is not running")
	}
	return p.cmd.Process.Signal(sig)
}
