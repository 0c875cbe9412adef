// Package pgtest gives tests a real PostgreSQL: one server per test
// binary, started on first use in a temporary directory and listening on
// 127.0.0.1 only, and a fresh database for every call of DSN, dropped when
// the test ends.
//
// The server is Debian's postgresql (/usr/lib/postgresql/<version>/bin).
// Installing it is the test command's job: a test that asks for a database
// on a machine without it fails when CI=true and is skipped otherwise.
//
// The server runs with fsync off: a test database is thrown away, and
// durability would only make every test slower. Running as root, it runs
// as the postgres user, since PostgreSQL refuses to run as root.
//
// The server is stopped by Stop (Main calls it after the tests) and, should
// the test binary die without stopping it (a timeout's panic, a kill), by
// the kernel: the server is started with a parent-death signal, so it shuts
// down when the binary is gone. A directory left behind that way is removed
// by the next test binary that starts a server.
//
// Unlike the rest of airlock, this package keeps state in package
// variables: one server per process is the point of it.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/airlock-registry/airlock/internal/freeport"
)

// dirPrefix names the temporary directories of servers, so that one left
// behind by a test binary that died can be found and removed.
const dirPrefix = "airlock-pgtest-"

var (
	mu     sync.Mutex
	srv    *server
	srvErr error
	dbSeq  atomic.Int64
)

// DSN returns the connection string of a new, empty database on the test
// binary's server, starting the server on first use. The database is
// dropped when tb ends.
func DSN(tb testing.TB) string {
	tb.Helper()
	s, err := start()
	if errors.Is(err, errNotInstalled) {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("%v (CI=true forbids skipping)", err)
		}
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// FORCE ends the connections a test left open (a pool closed
		// late, a leaked listener): the database goes either way.
		err := s.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		if err != nil && !s.stopped() {
			tb.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return s.dsn(name)
}

// Main runs the tests and then stops the server, if one was started:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if err := Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Stop shuts the server down and removes its directory. It is a no-op when
// no server runs.
func Stop() error {
	mu.Lock()
	defer mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.stop()
	srv, srvErr = nil, nil
	return err
}

var errNotInstalled = errors.New("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): apt-get install -y postgresql")

func start() (*server, error) {
	mu.Lock()
	defer mu.Unlock()
	if srv != nil || srvErr != nil {
		return srv, srvErr
	}
	srv, srvErr = newServer()
	return srv, srvErr
}

// binDir finds the newest installed PostgreSQL's programs.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var found []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		return "", errNotInstalled
	}
	version := func(d string) int {
		n, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return n
	}
	slices.SortFunc(found, func(a, b string) int { return version(b) - version(a) })
	return found[0], nil
}

type server struct {
	dir  string // temporary directory: data/, the socket, the log
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when the server exited
	err  error         // its exit status, once done is closed

	adminMu sync.Mutex
	admin   *pgx.Conn
	down    atomic.Bool
}

func newServer() (*server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	removeAbandoned()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, err
	}
	// The pid names the binary that owns the directory, for
	// removeAbandoned.
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cred, err := credential(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &server{dir: dir}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	// A free port can be taken between asking for it and the server
	// binding it: try a few.
	for try := 0; ; try++ {
		err = s.run(bin, data, cred)
		if err == nil {
			return s, nil
		}
		if try == 4 || !strings.Contains(err.Error(), "could not bind") && !strings.Contains(err.Error(), "could not create") {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

// credential returns who the server runs as: the postgres user when the
// tests run as root (the server refuses root), else the current user.
func credential(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL must run as the postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// freePort picks a free loopback port that no other pick in this process
// has returned (see package freeport).
func freePort() (int, error) { return freeport.Port() }

// run starts the server on a free port and waits until it accepts
// connections.
func (s *server) run(bin, data string, cred *syscall.Credential) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	logPath := filepath.Join(s.dir, "log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data,
		"-p", strconv.Itoa(port), "-k", s.dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=500", "-c", "shared_buffers=128MB",
		"-c", "log_min_messages=warning", "-c", "logging_collector=off")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: cred,
		Setpgid:    true,
		// Should the test binary die without Stop, the server gets
		// SIGQUIT (immediate shutdown) from the kernel.
		Pdeathsig: syscall.SIGQUIT,
	}
	// The parent-death signal fires when the thread that started the
	// child exits, not the process: start it from a locked thread that
	// lives as long as the server does.
	started := make(chan error, 1)
	s.done = make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.err = cmd.Wait()
		close(s.done)
		// Returning without unlocking ends this thread: the child is
		// gone, so its death signal no longer matters.
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	s.cmd, s.port = cmd, port

	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, s.dsn("postgres"))
		cancel()
		if err == nil {
			s.admin = conn
			return nil
		}
		select {
		case <-s.done:
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres exited (%v): %s", s.err, out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres did not accept connections within a minute: %v: %s", err, out)
		}
	}
}

func (s *server) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

func (s *server) exec(ctx context.Context, sql string) error {
	s.adminMu.Lock()
	defer s.adminMu.Unlock()
	if s.down.Load() {
		return errors.New("the server was stopped")
	}
	_, err := s.admin.Exec(ctx, sql)
	return err
}

func (s *server) stopped() bool { return s.down.Load() }

func (s *server) kill() {
	s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// stop shuts the server down (fast: open sessions are ended) and removes
// its directory.
func (s *server) stop() error {
	s.adminMu.Lock()
	s.down.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	s.admin.Close(ctx)
	cancel()
	s.adminMu.Unlock()

	var err error
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		err = errors.New("postgres did not shut down within 30s; killed it")
		s.kill()
	}
	return errors.Join(err, os.RemoveAll(s.dir))
}

// removeAbandoned removes the directories of servers whose test binary is
// gone, stopping such a server if it still runs.
func removeAbandoned() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil {
			continue // still being set up, or not ours
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || alive(owner) {
			continue
		}
		if pid := postmaster(dir); pid > 0 {
			syscall.Kill(pid, syscall.SIGQUIT)
		}
		os.RemoveAll(dir)
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// postmaster returns the pid of the server still running in dir, if any:
// the pid its lock file names, when that process runs on dir's data.
func postmaster(dir string) int {
	data := filepath.Join(dir, "data")
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), data) {
		return 0
	}
	return pid
}
