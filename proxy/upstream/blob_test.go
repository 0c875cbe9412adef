package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// blobFault describes how a blob endpoint misbehaves in front of the real
// registry.
type blobFault struct {
	drops   int64 // how many responses are cut off halfway (-1: every one)
	chunked bool  // omit Content-Length on the first response
	ranged  string
	// ranged: how Range requests are answered:
	// "206" correctly, "ignore" with a full 200, "shifted" with a 206 that
	// starts at the wrong offset.
}

// faultyBlobs serves blob GETs of blob itself, applying f, and passes other
// requests to next.
func faultyBlobs(next http.Handler, blob []byte, f blobFault) (http.Handler, *atomic.Int64) {
	var count atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			next.ServeHTTP(w, r)
			return
		}
		n := count.Add(1)
		start := int64(0)
		if rg := r.Header.Get("Range"); rg != "" {
			var err error
			first, _, _ := strings.Cut(strings.TrimPrefix(rg, "bytes="), "-")
			start, err = strconv.ParseInt(first, 10, 64)
			if err != nil {
				http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
				return
			}
			switch f.ranged {
			case "206":
				r = r.Clone(r.Context())
				// The real registry wants both ends of the range.
				r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, len(blob)-1))
			case "ignore":
				r = r.Clone(r.Context())
				r.Header.Del("Range")
				start = 0
			case "shifted":
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start-1, len(blob)-1, len(blob)))
				w.WriteHeader(http.StatusPartialContent)
				_, _ = w.Write(blob[start-1:])
				return
			}
		}
		if f.drops >= 0 && n > f.drops {
			next.ServeHTTP(w, r)
			return
		}
		rest := blob[start:]
		if f.chunked && n == 1 {
			w.Header().Set("Transfer-Encoding", "chunked")
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(rest)))
		}
		if start > 0 {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(blob)-1, len(blob)))
			w.WriteHeader(http.StatusPartialContent)
		}
		_, _ = w.Write(rest[:len(rest)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection drops mid-body
	}), &count
}

func TestBlobResume(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		fault    blobFault
		want     error
		size     int64 // -2: the blob's size
		requests int64
	}{
		{name: "dropped once, resumed with 206", fault: blobFault{drops: 1, ranged: "206"}, size: -2, requests: 2},
		{name: "dropped three times, resumed each time", fault: blobFault{drops: 3, ranged: "206"}, size: -2, requests: 4},
		{name: "chunked body dropped, resumed", fault: blobFault{drops: 1, chunked: true, ranged: "206"}, size: -1, requests: 2},
		{name: "dropped every time", fault: blobFault{drops: -1, ranged: "206"}, want: ErrUnavailable, requests: 4},
		{name: "upstream ignores Range", fault: blobFault{drops: 1, ranged: "ignore"}, want: ErrUnavailable, requests: 2},
		{name: "upstream resumes at wrong offset", fault: blobFault{drops: 1, ranged: "shifted"}, want: ErrInvalid, requests: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			blob, d := layerBytes(t, s.layers[1])
			h, count := faultyBlobs(inner, blob, tt.fault)
			r := newClient(t, serve(t, h).URL)
			body, size, err := r.GetBlob(t.Context(), "app", digestOf(t, d))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(body)
			body.Close()
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("reading blob: %v, want %v", err, tt.want)
			}
			if err == nil && !bytes.Equal(got, blob) {
				t.Fatalf("resumed blob differs: %d bytes, want %d", len(got), len(blob))
			}
			if want := tt.size; want == -2 && size != int64(len(blob)) || want == -1 && size != -1 {
				t.Errorf("size %d, want %d (blob %d)", size, want, len(blob))
			}
			if n := count.Load(); n != tt.requests {
				t.Errorf("upstream saw %d blob requests, want %d", n, tt.requests)
			}
		})
	}
}

// trickle serves blob in small pieces with a pause before each; stallAt >= 0
// makes it stop sending after that many bytes until the client gives up.
// It counts the requests it serves in n.
func trickle(n *atomic.Int64, blob []byte, pieces int, pause time.Duration, stallAt int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		start := 0
		if rg := r.Header.Get("Range"); rg != "" {
			first, _, _ := strings.Cut(strings.TrimPrefix(rg, "bytes="), "-")
			start, _ = strconv.Atoi(first)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(blob)-1, len(blob)))
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)-start))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		}
		w.(http.Flusher).Flush() // headers go out before any stall
		step := max(len(blob)/pieces, 1)
		for off := start; off < len(blob); off += step {
			if stallAt >= 0 && off >= stallAt {
				<-r.Context().Done()
				return
			}
			select {
			case <-time.After(pause):
			case <-r.Context().Done():
				return
			}
			_, _ = w.Write(blob[off:min(off+step, len(blob))])
			w.(http.Flusher).Flush()
		}
	})
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	blob := bytes.Repeat([]byte("airlock "), 4096)
	const idle = 150 * time.Millisecond
	tests := []struct {
		name     string
		pieces   int
		every    time.Duration // server's pause before each piece
		stallAt  int           // server stops sending here (-1: never)
		pause    time.Duration // caller's own pause after its first read
		want     error
		requests int64 // 1 unless the body had to be resumed
	}{
		{name: "slow but progressing body is never cut", pieces: 10, every: idle / 3, stallAt: -1, requests: 1},
		{name: "caller pausing between reads is not a stall", pieces: 2, stallAt: -1, pause: 2 * idle, requests: 1},
		{name: "stalled body fails after resume attempts", pieces: 10, stallAt: len(blob) / 2, want: errStalled, requests: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var requests atomic.Int64
			h := trickle(&requests, blob, tt.pieces, tt.every, tt.stallAt)
			r := newClient(t, serve(t, h).URL, func(o *Options) {
				o.IdleTimeout = idle
				o.MaxAttempts = 2
			})
			body, _, err := r.GetBlob(t.Context(), "app", digestOf(t, "sha256:"+sixtyFourA))
			if err != nil {
				t.Fatal(err)
			}
			defer body.Close()
			var got bytes.Buffer
			buf := make([]byte, 1024)
			start := time.Now()
			for {
				n, rerr := body.Read(buf)
				got.Write(buf[:n])
				if rerr == io.EOF {
					break
				}
				if rerr != nil {
					err = rerr
					break
				}
				time.Sleep(tt.pause)
				tt.pause = 0
			}
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("read: %v after %s, want %v", err, time.Since(start), tt.want)
			}
			if err == nil && !bytes.Equal(got.Bytes(), blob) {
				t.Fatalf("got %d bytes, want %d", got.Len(), len(blob))
			}
			if err != nil && !errors.Is(err, ErrUnavailable) {
				t.Errorf("stall is not ErrUnavailable: %v", err)
			}
			if n := requests.Load(); n != tt.requests {
				t.Errorf("upstream saw %d requests, want %d", n, tt.requests)
			}
		})
	}
}

// TestHeadBlob asks for a blob's existence without transferring it.
func TestHeadBlob(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	var gets atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			gets.Add(1)
		}
		inner.ServeHTTP(w, r)
	})
	r := newClient(t, serve(t, h).URL)
	body, d := layerBytes(t, s.layers[0])
	size, err := r.HeadBlob(t.Context(), "app", digest.Digest(d))
	if err != nil || size != int64(len(body)) {
		t.Fatalf("HeadBlob = %d, %v; want %d", size, err, len(body))
	}
	if _, err := r.HeadBlob(t.Context(), "app", digest.FromString("absent")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("HeadBlob of an absent blob = %v, want ErrNotFound", err)
	}
	if gets.Load() != 0 {
		t.Fatalf("HeadBlob made %d GETs", gets.Load())
	}
}

// TestMaxBlobTransfers: with one slot, a second blob waits for the first
// body to close, while manifests are answered meanwhile.
func TestMaxBlobTransfers(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	var inFlight, most atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
		}
		inner.ServeHTTP(w, r)
	})
	r := newClient(t, serve(t, h).URL, func(o *Options) { o.MaxBlobTransfers = 1 })
	_, d0 := layerBytes(t, s.layers[0])
	_, d1 := layerBytes(t, s.layers[1])
	first, _, err := r.GetBlob(t.Context(), "app", digest.Digest(d0))
	if err != nil {
		t.Fatal(err)
	}
	// The slot is taken: a second blob waits (here until its ctx ends)...
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := r.GetBlob(ctx, "app", digest.Digest(d1)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("second GetBlob with the slot taken = %v, want ErrUnavailable after its ctx ended", err)
	}
	// ...while a manifest does not.
	if _, err := r.HeadManifest(t.Context(), "app", "v1", nil); err != nil {
		t.Fatalf("manifest while the blob slot is taken: %v", err)
	}
	readAll(t, first)
	second, _, err := r.GetBlob(t.Context(), "app", digest.Digest(d1))
	if err != nil {
		t.Fatalf("GetBlob after the first body closed: %v", err)
	}
	readAll(t, second)
	if most.Load() != 1 {
		t.Fatalf("%d blob requests ran at once, want at most 1", most.Load())
	}
}

// TestGetBlobFrom: a transfer holding a blob's first bytes fetches only the
// rest, from a registry that takes an open-ended range and from one that
// wants both ends (the real registry here answers "bytes=N-" with 416); an
// upstream that ignores the range or starts elsewhere is refused, since its
// bytes would be spliced in at the wrong place.
func TestGetBlobFrom(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		fault *blobFault // nil: the real registry alone
		want  error
		// known is the size the caller passes.
		known func(size int64) int64
	}{
		{name: "real registry, size unknown: both ends after a 416"},
		{name: "real registry, size known: both ends at once", known: func(size int64) int64 { return size }},
		{name: "open-ended range", fault: &blobFault{drops: 0, ranged: "206"}},
		{name: "range ignored", fault: &blobFault{drops: 0, ranged: "ignore"}, want: ErrUnavailable},
		{name: "range shifted", fault: &blobFault{drops: 0, ranged: "shifted"}, want: ErrInvalid},
	}
	for _, tt := range tests {
		if tt.known == nil {
			tt.known = func(int64) int64 { return -1 }
		}
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			blob, d := layerBytes(t, s.layers[1])
			var h http.Handler = inner
			if tt.fault != nil {
				h, _ = faultyBlobs(inner, blob, *tt.fault)
			}
			r := newClient(t, serve(t, h).URL)
			off := int64(len(blob) / 3)
			body, size, err := r.GetBlobFrom(t.Context(), "app", digestOf(t, d), off, tt.known(int64(len(blob))))
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("GetBlobFrom = %v, want %v", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer body.Close()
			got, err := io.ReadAll(body)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, blob[off:]) {
				t.Fatalf("got %d bytes, want the %d from byte %d", len(got), len(blob)-int(off), off)
			}
			if size != int64(len(blob)) {
				t.Errorf("size %d, want the whole blob's %d", size, len(blob))
			}
		})
	}
}
