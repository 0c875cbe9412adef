package upstreamtest

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// recordingWriter remembers the status and body size of one response.
type recordingWriter struct {
	http.ResponseWriter
	req  Request
	live *atomic.Int64
}

func (w *recordingWriter) WriteHeader(code int) {
	if w.req.Status == 0 {
		w.req.Status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	if w.req.Status == 0 {
		w.req.Status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.req.Bytes += int64(n)
	w.live.Add(int64(n))
	return n, err
}

// Flush passes flushes through so throttled bodies leave in small pieces.
func (w *recordingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (u *Upstream) begin(w http.ResponseWriter, r *http.Request, l Listener) *recordingWriter {
	return &recordingWriter{ResponseWriter: w, live: &u.written, req: Request{
		Listener:      l,
		Method:        r.Method,
		Path:          r.URL.Path,
		Authorization: r.Header.Get("Authorization"),
	}}
}

// end records the request once it is answered, so that counts include only
// finished requests and a test that waits for its client sees them all.
func (u *Upstream) end(w *recordingWriter) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.requests = append(u.requests, w.req)
}

func (u *Upstream) violate(format string, args ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.violations = append(u.violations, fmt.Sprintf(format, args...))
}

// Requests returns every request received so far on every listener, in the
// order they were answered.
func (u *Upstream) Requests() []Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Request(nil), u.requests...)
}

// Total is the number of requests received on all listeners.
func (u *Upstream) Total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.requests)
}

// Reset forgets the recorded requests, violations and bytes served.
func (u *Upstream) Reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.requests, u.violations = nil, nil
	u.written.Store(0)
}

// Violations lists the protocol violations seen, such as credentials sent
// to the CDN.
func (u *Upstream) Violations() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.violations...)
}

// BlobGETs counts the GETs of blob d on the registry listener of any
// repository, leaving out those answered 401: an authentication challenge
// is the protocol's handshake, not a transfer.
func (u *Upstream) BlobGETs(d v1.Hash) int {
	return u.count(RegistryListener, http.MethodGet, "/blobs/"+d.String())
}

// ManifestGETs counts GETs of manifest ref (a tag or a digest) like BlobGETs.
func (u *Upstream) ManifestGETs(ref string) int {
	return u.count(RegistryListener, http.MethodGet, "/manifests/"+ref)
}

// CDNGETs counts GETs of blob d on the CDN listener.
func (u *Upstream) CDNGETs(d v1.Hash) int {
	return u.count(CDNListener, http.MethodGet, "/blobs/"+d.String())
}

// BytesServed is the number of body bytes written on all listeners,
// including those of responses still being written, so a test can wait
// for a transfer to be under way.
func (u *Upstream) BytesServed() int64 {
	return u.written.Load()
}

// Count counts requests on listener l with method whose path ends in
// suffix, leaving out those answered 401 like BlobGETs.
func (u *Upstream) Count(l Listener, method, suffix string) int {
	return u.count(l, method, suffix)
}

func (u *Upstream) count(l Listener, method, suffix string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, r := range u.requests {
		if r.Listener == l && r.Method == method && r.Status != http.StatusUnauthorized && strings.HasSuffix(r.Path, suffix) {
			n++
		}
	}
	return n
}
