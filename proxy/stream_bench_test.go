package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// The stream-through benchmarks: a large layer nobody has pulled, from an
// unthrottled origin on loopback, through a proxy listening on loopback,
// to a client reading 32 KiB or 1 MiB at a time, beside the same client
// reading the origin directly. Proxy, origin and client share the
// process, so a CPU profile shows the proxy's cost beside theirs:
//
//	go test -run '^$' -bench ColdBlob -benchtime 8x -cpuprofile cold.pprof ./proxy
//	go tool pprof -top -focus 'proxy\.|storage\.' proxy.test cold.pprof
//
// integration/bench measures the same with airlock as its own process.

// blobOrigin serves blobs from memory, as fast as loopback allows, with
// writes of 32 KiB like a Go registry copying from a file.
type blobOrigin struct {
	srv *httptest.Server
	// rate paces each response to this many bytes per second, in pieces
	// of 32 KiB, like a distant registry; 0 is unthrottled.
	rate  int64
	mu    sync.Mutex
	blobs map[string][]byte
}

func newBlobOrigin(tb testing.TB) *blobOrigin {
	o := &blobOrigin{blobs: map[string][]byte{}}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := strings.LastIndex(r.URL.Path, "/blobs/")
		if i < 0 {
			w.WriteHeader(http.StatusOK) // the /v2/ ping
			return
		}
		o.mu.Lock()
		b, ok := o.blobs[r.URL.Path[i+len("/blobs/"):]]
		o.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Docker-Content-Digest", r.URL.Path[i+len("/blobs/"):])
		if o.rate == 0 || r.Method == http.MethodHead {
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		start := time.Now()
		for sent := 0; sent < len(b); {
			n := min(32<<10, len(b)-sent)
			if _, err := w.Write(b[sent : sent+n]); err != nil {
				return
			}
			http.NewResponseController(w).Flush()
			sent += n
			time.Sleep(time.Until(start.Add(time.Duration(float64(sent) / float64(o.rate) * float64(time.Second)))))
		}
	}))
	tb.Cleanup(o.srv.Close)
	return o
}

// add seeds a fresh pseudo-random blob of size bytes and returns its
// digest; seed makes it differ from every other.
func (o *blobOrigin) add(size int, seed uint64) digest.Digest {
	b := make([]byte, size)
	var key [32]byte
	key[0], key[1], key[2] = byte(seed), byte(seed>>8), 0xb1
	_, _ = rand.NewChaCha8(key).Read(b)
	sum := sha256.Sum256(b)
	d := digest.NewDigestFromBytes(digest.SHA256, sum[:])
	o.mu.Lock()
	o.blobs[d.String()] = b
	o.mu.Unlock()
	return d
}

func (o *blobOrigin) remove(d digest.Digest) {
	o.mu.Lock()
	delete(o.blobs, d.String())
	o.mu.Unlock()
}

// readBody GETs url with a client reading readSize bytes at a time and
// returns the time to the first body byte and to the last.
func readBody(ctx context.Context, c *http.Client, url string, readSize int, want int64) (ttfb, total time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	buf := make([]byte, readSize)
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		if m > 0 && n == 0 {
			ttfb = time.Since(start)
		}
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, 0, err
		}
	}
	if n != want {
		return 0, 0, fmt.Errorf("GET %s: %d bytes, want %d", url, n, want)
	}
	return ttfb, time.Since(start), nil
}

func BenchmarkColdBlob(b *testing.B) {
	for _, readSize := range []int{32 << 10, 1 << 20} {
		for _, via := range []string{"proxy", "direct"} {
			b.Run(fmt.Sprintf("read=%dKiB/%s", readSize>>10, via), func(b *testing.B) {
				benchmarkCold(b, 128<<20, 0, readSize, via)
			})
		}
	}
}

// BenchmarkColdBlobSlowOrigin is BenchmarkColdBlob from an origin that
// sends 64 MiB/s: the proxy keeps up, and what it costs is its CPU time.
func BenchmarkColdBlobSlowOrigin(b *testing.B) {
	for _, via := range []string{"proxy", "direct"} {
		b.Run(via, func(b *testing.B) {
			benchmarkCold(b, 32<<20, 64<<20, 1<<20, via)
		})
	}
}

func benchmarkCold(b *testing.B, size, rate int64, readSize int, via string) {
	{
		{
			{
				o := newBlobOrigin(b)
				o.rate = rate
				base := o.srv.URL + "/v2/library/app"
				var p *Proxy
				if via == "proxy" {
					p = newBenchProxy(b, &benchOrigin{srv: o.srv})
					srv := httptest.NewServer(p)
					b.Cleanup(srv.Close)
					base = srv.URL + "/v2/library/app"
				}
				// A client as a runtime has: the default 4 KiB read buffer,
				// which a larger Read bypasses.
				c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
				b.Cleanup(c.CloseIdleConnections)
				b.SetBytes(size)
				var ttfbs []time.Duration
				var cpu time.Duration
				for i := range b.N {
					b.StopTimer()
					d := o.add(int(size), uint64(i))
					cpu0 := processCPU()
					b.StartTimer()
					ttfb, _, err := readBody(b.Context(), c, base+"/blobs/"+d.String(), readSize, size)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					ttfbs = append(ttfbs, ttfb)
					if p != nil {
						waitFilled(b, p, d)
					}
					cpu += processCPU() - cpu0
					o.remove(d)
					b.StartTimer()
				}
				b.ReportMetric(float64(medianDuration(ttfbs))/float64(time.Millisecond), "ttfb-ms")
				// The CPU time of the whole process (origin, proxy and
				// client) per transfer, the proxy's commit included.
				b.ReportMetric(float64(cpu)/float64(b.N)/float64(time.Millisecond), "cpu-ms/op")
			}
		}
	}
}

// waitFilled waits until p's fill of d has committed, so that one
// iteration does not pay for the last one's commit.
func waitFilled(tb testing.TB, p *Proxy, d digest.Digest) {
	deadline := time.Now().Add(time.Minute)
	for p.fills.running(d) {
		if time.Now().After(deadline) {
			tb.Fatalf("the fill of %s did not end", d)
		}
		time.Sleep(time.Millisecond)
	}
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func medianDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[(len(s)-1)/2]
}

// BenchmarkWarmServe compares ways of serving a cached blob to one client
// reading 32 KiB or 1 MiB at a time: http.ServeContent of the *os.File
// (sendfile, what serveCachedBlob does) and copies through user space
// with buffers of 32 KiB and 1 MiB. Server and client share the process;
// docs/benchmarks.md has the same comparison across processes.
func BenchmarkWarmServe(b *testing.B) {
	const size = 256 << 20
	path := b.TempDir() + "/blob"
	o := &blobOrigin{blobs: map[string][]byte{}}
	d := o.add(size, 3)
	if err := os.WriteFile(path, o.blobs[d.String()], 0o600); err != nil {
		b.Fatal(err)
	}
	type onlyWriter struct{ io.Writer }
	type onlyReader struct{ io.Reader }
	serve := map[string]func(http.ResponseWriter, *os.File){
		"copy32KiB": func(w http.ResponseWriter, f *os.File) {
			_, _ = io.CopyBuffer(onlyWriter{w}, onlyReader{f}, make([]byte, 32<<10))
		},
		"copy1MiB": func(w http.ResponseWriter, f *os.File) {
			_, _ = io.CopyBuffer(onlyWriter{w}, onlyReader{f}, make([]byte, 1<<20))
		},
	}
	for _, readSize := range []int{32 << 10, 1 << 20} {
		for _, how := range []string{"sendfile", "copy32KiB", "copy1MiB"} {
			b.Run(fmt.Sprintf("read=%dKiB/%s", readSize>>10, how), func(b *testing.B) {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					f, err := os.Open(path)
					if err != nil {
						http.Error(w, err.Error(), http.StatusInternalServerError)
						return
					}
					defer f.Close()
					w.Header().Set("Content-Length", fmt.Sprint(size))
					if how == "sendfile" {
						http.ServeContent(w, r, "", time.Time{}, f)
						return
					}
					serve[how](w, f)
				}))
				b.Cleanup(srv.Close)
				c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
				b.Cleanup(c.CloseIdleConnections)
				b.SetBytes(size)
				var cpu time.Duration
				for b.Loop() {
					cpu0 := processCPU()
					if _, _, err := readBody(b.Context(), c, srv.URL, readSize, size); err != nil {
						b.Fatal(err)
					}
					cpu += processCPU() - cpu0
				}
				b.ReportMetric(float64(cpu)/float64(b.N)/float64(time.Millisecond), "cpu-ms/op")
			})
		}
	}
}
