package clients

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// daemon is a long-running process with its log in a file.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

// startDaemon starts argv with stdout and stderr in dir/<name>.log and stops
// it when tb's test ends: SIGTERM, then SIGKILL after ten seconds.
func startDaemon(tb testing.TB, dir, name string, argv ...string) *daemon {
	tb.Helper()
	d := &daemon{name: name, logPath: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
	logf, err := os.Create(d.logPath)
	if err != nil {
		tb.Fatalf("log file for %s: %v", name, err)
	}
	// The daemon must outlive the call that starts it, so it does not take
	// the test context: cleanup ends it instead.
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.Env = loopbackOnlyEnv()
	// Own process group, so a daemon's children go with it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		logf.Close()
		close(d.exited)
	}()
	tb.Cleanup(func() {
		if err := d.stop(10 * time.Second); err != nil {
			tb.Errorf("stop %s: %v", name, err)
		}
		if tb.Failed() {
			tb.Logf("%s log (last lines):\n%s", name, d.tail(40))
		}
	})
	return d
}

func (d *daemon) stop(grace time.Duration) error {
	select {
	case <-d.exited:
		return nil
	default:
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.exited:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-d.exited:
		return fmt.Errorf("%s ignored SIGTERM for %v and was killed", d.name, grace)
	case <-time.After(grace):
		return fmt.Errorf("%s survived SIGKILL", d.name)
	}
}

// waitReady polls ready until it succeeds, the daemon exits or timeout
// passes; the error carries the end of the daemon's log.
func (d *daemon) waitReady(ctx context.Context, timeout time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = ready(ctx); last == nil {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("%s exited before it was ready (%v); log:\n%s", d.name, d.waitErr, d.tail(30))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %w; log:\n%s", d.name, timeout, errors.Join(last, ctx.Err()), d.tail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (d *daemon) tail(lines int) string {
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return lastLines(string(b), lines)
}

func lastLines(s string, n int) string {
	count := 0
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' && i != len(s)-1 {
			count++
			if count == n {
				return s[i+1:]
			}
		}
	}
	return s
}

// run executes a client command to completion and returns its combined
// output; the error includes that output, since clients explain failures
// there.
func run(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = loopbackOnlyEnv()
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", filepath.Base(argv[0]), err, out)
	}
	return string(out), nil
}

// tempDir makes a short-named directory, removed at cleanup: unix socket
// paths are limited to 108 bytes, which test-named directories can exceed.
func tempDir(tb testing.TB, prefix string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
