// Package s3test gives tests a real S3 server: versitygw with its posix
// backend, one per test binary, started on first use with its data in a
// temporary directory and listening on 127.0.0.1 only, and a fresh bucket
// for every call of Params, in the form distribution's s3-aws driver
// (storage.driver: s3) takes its parameters.
//
// Tests that stop the server on purpose (an object store that goes away
// mid-commit) start a private one with Start, which they may Stop and
// Restart without disturbing the tests sharing the binary's server.
//
// versitygw is a Go program, installed with
//
//	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
//
// (scripts/test.sh does this when it is missing). The package looks for it
// in this order: the file $VERSITYGW names; versitygw on PATH; $GOBIN; the
// bin directory of each $GOPATH entry; $HOME/go/bin, where go install puts
// it by default. A test that needs a server on a machine without it fails
// when CI=true and is skipped otherwise.
//
// Servers are stopped by Stop (Main calls it after the tests) or at the end
// of the test that started them and, should the test binary die first (a
// timeout's panic, a kill), by the kernel: each server is started with a
// parent-death signal. A directory left behind that way is removed by the
// next test binary that starts a server.
//
// Unlike the rest of airlock, this package keeps state in package
// variables: one shared server per process is the point of it.
package s3test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/awserr"
	"github.com/aws/aws-sdk-go/aws/credentials"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/s3"

	"github.com/airlock-registry/airlock/internal/freeport"
)

// Region is the region every server answers for and every Params names.
const Region = "us-east-1"

// dirPrefix names the temporary directories of servers, so that one left
// behind by a test binary that died can be found and removed.
const dirPrefix = "airlock-s3test-"

var (
	mu        sync.Mutex
	shared    *Server
	sharedErr error
	bucketSeq atomic.Int64
)

// Params returns the s3-aws driver parameters of a new, empty bucket on the
// test binary's server, starting the server on first use. The bucket and
// its objects are removed when tb ends.
func Params(tb testing.TB) map[string]any {
	tb.Helper()
	mu.Lock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = newServer()
	}
	s, err := shared, sharedErr
	mu.Unlock()
	requireInstalled(tb, err)
	if err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	return s.Params(tb)
}

// Main runs the tests and then stops the shared server, if one was
// started:
//
//	func TestMain(m *testing.M) { os.Exit(s3test.Main(m)) }
//
// It unsets AWS_CA_BUNDLE first. With it set, the AWS SDK that the s3-aws
// driver uses loads the bundle into http.DefaultClient each time a driver
// is created, a write that races with every other driver being created and
// every request sent through that client; tests create drivers in parallel.
// The servers here speak plain HTTP, so the bundle has nothing to verify.
func Main(m *testing.M) int {
	os.Unsetenv("AWS_CA_BUNDLE")
	code := m.Run()
	if err := Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "s3test:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Stop shuts the shared server down and removes its directory. It is a
// no-op when none runs.
func Stop() error {
	mu.Lock()
	defer mu.Unlock()
	if shared == nil {
		return nil
	}
	err := shared.close()
	shared, sharedErr = nil, nil
	return err
}

// Start starts a private server for tb, which tb may Stop and Restart. It
// is shut down and its directory removed when tb ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := newServer()
	requireInstalled(tb, err)
	if err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.close(); err != nil {
			tb.Errorf("s3test: %v", err)
		}
	})
	return s
}

var errNotInstalled = errors.New("versitygw is not installed: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0 " +
	"(or set VERSITYGW to its path)")

func requireInstalled(tb testing.TB, err error) {
	tb.Helper()
	if !errors.Is(err, errNotInstalled) {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%v (CI=true forbids skipping)", err)
	}
	tb.Skip(err)
}

// Binary returns the path of versitygw, looked for where the package doc
// says, or an error saying how to install it.
func Binary() (string, error) {
	if p := os.Getenv("VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("VERSITYGW=%s: %w", p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	for _, p := range filepath.SplitList(os.Getenv("GOPATH")) {
		if p != "" {
			dirs = append(dirs, filepath.Join(p, "bin"))
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errNotInstalled
}

// Server is one versitygw on 127.0.0.1 with a posix backend in a
// temporary directory.
type Server struct {
	bin       string
	dir       string // temporary directory: root/ (the buckets), log, owner
	port      int
	accessKey string
	secretKey string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exited
	err  error         // its exit status, once done is closed
}

func newServer() (*Server, error) {
	bin, err := Binary()
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
	if err := os.Mkdir(filepath.Join(dir, "root"), 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{bin: bin, dir: dir, accessKey: "airlock-test", secretKey: randomKey()}
	// A free port can be taken between asking for it and the server
	// binding it: try a few.
	for try := 0; ; try++ {
		if s.port, err = freePort(); err == nil {
			err = s.run()
		}
		if err == nil {
			return s, nil
		}
		if try == 4 || !strings.Contains(err.Error(), "address already in use") {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

func randomKey() string {
	b := make([]byte, 18)
	rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// freePort picks a free loopback port that no other pick in this process
// has returned (see package freeport).
func freePort() (int, error) { return freeport.Port() }

// Endpoint is the server's URL, the driver's regionendpoint.
func (s *Server) Endpoint() string { return "http://127.0.0.1:" + strconv.Itoa(s.port) }

// Addr is the server's host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Credentials returns the root account's access key and secret.
func (s *Server) Credentials() (accessKey, secretKey string) { return s.accessKey, s.secretKey }

// Params creates a bucket and returns the s3-aws driver parameters that
// name it. The bucket is removed when tb ends.
func (s *Server) Params(tb testing.TB) map[string]any {
	tb.Helper()
	bucket := s.CreateBucket(tb)
	return s.ParamsFor(bucket)
}

// ParamsFor returns the s3-aws driver parameters for bucket, which need
// not exist.
func (s *Server) ParamsFor(bucket string) map[string]any {
	return map[string]any{
		"bucket":         bucket,
		"region":         Region,
		"regionendpoint": s.Endpoint(),
		"forcepathstyle": true,
		"accesskey":      s.accessKey,
		"secretkey":      s.secretKey,
	}
}

// CreateBucket creates a new, empty bucket through the S3 API and returns
// its name. It is removed when tb ends.
func (s *Server) CreateBucket(tb testing.TB) string {
	tb.Helper()
	bucket := fmt.Sprintf("airlock-%d-%d", os.Getpid(), bucketSeq.Add(1))
	if _, err := s.client(tb).CreateBucketWithContext(tb.Context(), &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		tb.Fatalf("s3test: creating bucket %s on %s: %v", bucket, s.Endpoint(), err)
	}
	// The posix backend keeps a bucket as a directory of the root: removing
	// it directly is one call, where the S3 API would need every object
	// listed and deleted first.
	tb.Cleanup(func() { os.RemoveAll(filepath.Join(s.dir, "root", bucket)) })
	return bucket
}

// Object returns the object at key in bucket, as the S3 API serves it, or
// an error: one wrapping fs.ErrNotExist when there is no such object.
func (s *Server) Object(tb testing.TB, bucket, key string) ([]byte, error) {
	tb.Helper()
	out, err := s.client(tb).GetObjectWithContext(tb.Context(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if ae, ok := err.(awserr.Error); ok && ae.Code() == s3.ErrCodeNoSuchKey {
		return nil, fmt.Errorf("%s/%s: %w", bucket, key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}

// client is an S3 client of the root account. It has an http.Client of its
// own: the SDK may change the one it is given (see Main).
func (s *Server) client(tb testing.TB) *s3.S3 {
	tb.Helper()
	sess, err := session.NewSession(aws.NewConfig().WithHTTPClient(&http.Client{}).
		WithEndpoint(s.Endpoint()).WithRegion(Region).WithS3ForcePathStyle(true).
		WithCredentials(credentials.NewStaticCredentials(s.accessKey, s.secretKey, "")))
	if err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	return s3.New(sess)
}

// Stop kills the server, as a crash or a network partition would end it,
// and waits for it to exit. Its data stays for Restart.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		tb.Fatal("s3test: Stop of a server that is not running")
	}
	s.kill()
}

// Restart starts a stopped server again on the same port and data.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.run(); err != nil {
		tb.Fatalf("s3test: restarting the server on %s: %v", s.Addr(), err)
	}
}

// kill ends the process; s.mu is held.
func (s *Server) kill() {
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// close stops the server and removes its directory.
func (s *Server) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.kill()
	}
	return os.RemoveAll(s.dir)
}

// run starts the server and waits until it accepts connections.
func (s *Server) run() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("the server is already running")
	}
	logPath := filepath.Join(s.dir, "log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(s.bin, "--port", s.Addr(), "--quiet", "posix", filepath.Join(s.dir, "root"))
	// The root account's keys go by environment, not argv, which any
	// process on the machine can read.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.accessKey, "ROOT_SECRET_KEY="+s.secretKey)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// The parent-death signal fires when the thread that started the
	// child exits, not the process: start it from a locked thread that
	// lives as long as the server does.
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.err = cmd.Wait()
		close(done)
		// Returning without unlocking ends this thread: the child is
		// gone, so its death signal no longer matters.
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting versitygw: %w", err)
	}
	s.cmd, s.done = cmd, done

	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-done:
			s.cmd = nil
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("versitygw exited (%v): %s", s.err, out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			out, _ := os.ReadFile(logPath)
			return fmt.Errorf("versitygw did not accept connections on %s within 30s: %s", s.Addr(), out)
		}
	}
}

// removeAbandoned removes the directories of servers whose test binary is
// gone. Their servers died with it (the parent-death signal).
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
		os.RemoveAll(dir)
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
