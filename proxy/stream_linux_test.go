package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// TestSlowReaderHoldsNoOther: the clients of a fill each stream the spool
// at their own pace. One that stops reading (its socket buffers full, its
// sendfile waiting) holds up neither the fill nor another client, and when
// it reads on, after the spool became the blob, it still gets every byte.
func TestSlowReaderHoldsNoOther(t *testing.T) {
	t.Parallel()
	o := newBlobOrigin(t)
	const size = 16 << 20 // well past what the slow client's socket buffers take
	d := o.add(size, 7)
	o.mu.Lock()
	want := o.blobs[d.String()]
	o.mu.Unlock()
	p := newBenchProxy(t, &benchOrigin{srv: o.srv})
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	url := srv.URL + "/v2/library/app/blobs/" + d.String()

	// A receive buffer this small keeps the kernel from taking much of the
	// blob on the slow client's behalf.
	small := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	slowClient := &http.Client{Transport: &http.Transport{DialContext: small.DialContext, DisableCompression: true}}
	t.Cleanup(slowClient.CloseIdleConnections)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	slow, err := slowClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	if slow.StatusCode != http.StatusOK {
		t.Fatalf("slow client: %s", slow.Status)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	fastClient := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(fastClient.CloseIdleConnections)
	fast, err := fastClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(fast.Body)
	fast.Body.Close()
	if err != nil || !bytes.Equal(body, want) {
		t.Fatalf("the fast client, beside one that reads nothing: %d bytes, %v", len(body), err)
	}
	// The fill ends too: the slow client does not hold the commit.
	waitFilled(t, p, d)
	if _, err := p.blobs.Stat(t.Context(), d); err != nil {
		t.Fatalf("blob not stored while a client still streams it: %v", err)
	}
	body, err = io.ReadAll(slow.Body)
	if err != nil || !bytes.Equal(body, want) {
		t.Fatalf("the slow client, reading on after the commit: %d bytes, %v", len(body), err)
	}
}

// TestSpoolReaderPaths copies the same ranges through a reader's own
// handle (sendfile's way) and through ReadAt (the way where the spool
// cannot be reopened), each range starting where the last one ended.
func TestSpoolReaderPaths(t *testing.T) {
	t.Parallel()
	blobs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("0123456789abcdef"), 20_000)
	s, err := blobs.NewSpool(digest.FromBytes(content))
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Discard(s)
	if _, err := s.Write(content); err != nil {
		t.Fatal(err)
	}
	f := &fill{spool: s}
	const from = 1000
	for name, r := range map[string]*spoolReader{"own handle": f.spoolReader(from), "ReadAt": {spool: s}} {
		if (r.own != nil) != (name == "own handle") {
			t.Fatalf("%s: own handle %v", name, r.own)
		}
		var out bytes.Buffer
		off := int64(from)
		for _, n := range []int64{1, 4095, 100_000, 0, 150_000} {
			m, err := r.copy(&out, off, n)
			if err != nil || m != n {
				t.Fatalf("%s: copy of %d at %d = %d, %v", name, n, off, m, err)
			}
			off += n
		}
		r.close()
		if !bytes.Equal(out.Bytes(), content[from:off]) {
			t.Fatalf("%s: copied bytes differ from the spool's", name)
		}
	}
}

// gatedWriter holds its first ReadFrom until gate closes, the way a
// sendfile to a client that stopped reading waits, and counts the calls.
type gatedWriter struct {
	gate  chan struct{}
	calls atomic.Int64
	mu    sync.Mutex
	buf   bytes.Buffer
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.Write(p)
}

func (g *gatedWriter) ReadFrom(r io.Reader) (int64, error) {
	if g.calls.Add(1) == 1 {
		<-g.gate
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.buf.ReadFrom(r)
}

// TestReaderOfADiscardedSpoolWaits: a failed fill discards its spool, which
// empties it, a moment before it announces the failure. A reader that was
// behind, its client slow, finds the spool ended short of what the fill
// had published; it must wait for the announcement, not copy nothing
// again and again on a core until it comes, and then end with the fill's
// error.
func TestReaderOfADiscardedSpoolWaits(t *testing.T) {
	t.Parallel()
	blobs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("0123456789abcdef"), 20_000)
	d := digest.FromBytes(content)
	s, err := blobs.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Discard(s)
	half := int64(len(content) / 2)
	if _, err := s.Write(content[:half]); err != nil {
		t.Fatal(err)
	}
	f := &fill{digest: d, wake: make(chan struct{}), started: true, size: int64(len(content)), spool: s, written: half}
	w := &gatedWriter{gate: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- f.copyRange(t.Context(), w, 0, int64(len(content))) }()
	for w.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := blobs.Discard(s); err != nil {
		t.Fatal(err)
	}
	close(w.gate)
	time.Sleep(200 * time.Millisecond)
	if n := w.calls.Load(); n > 3 {
		t.Errorf("the reader of a discarded spool copied %d times while waiting for the fill's end", n)
	}
	boom := errors.New("upstream connection reset")
	f.update(func() { f.done, f.err = true, boom })
	select {
	case err := <-done:
		if !errors.Is(err, boom) {
			t.Fatalf("copyRange = %v; want the fill's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not end with the fill")
	}
}

// TestSpoolReaderOutOfFileDescriptors: a reader that cannot have a handle
// of its own, the process being out of file descriptors (many clients
// following fills), still reads the spool, through ReadAt. Not parallel:
// it lowers the process's limit on open files for a moment.
func TestSpoolReaderOutOfFileDescriptors(t *testing.T) {
	blobs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("descriptor"), 30_000)
	s, err := blobs.NewSpool(digest.FromBytes(content))
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Discard(s)
	if _, err := s.Write(content); err != nil {
		t.Fatal(err)
	}
	f := &fill{digest: digest.FromBytes(content), wake: make(chan struct{}), started: true,
		size: int64(len(content)), spool: s, written: int64(len(content)), verified: true}

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(len(ents) + 16)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower the limit on open files: %v", err)
	}
	var fillers []*os.File
	func() {
		defer func() {
			for _, f := range fillers {
				f.Close()
			}
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
				t.Fatalf("restoring the limit on open files: %v", err)
			}
		}()
		for {
			null, err := os.Open(os.DevNull)
			if err != nil {
				if !errors.Is(err, syscall.EMFILE) {
					t.Fatalf("opening fillers: %v", err)
				}
				break
			}
			fillers = append(fillers, null)
		}
		r := f.spoolReader(1000)
		defer r.close()
		if r.own != nil {
			t.Fatal("a handle of its own with no file descriptor left")
		}
		var out bytes.Buffer
		if err := f.copyRange(t.Context(), &out, 1000, int64(len(content))); err != nil || !bytes.Equal(out.Bytes(), content[1000:]) {
			t.Fatalf("copyRange out of file descriptors: %d bytes, %v", out.Len(), err)
		}
	}()
}
