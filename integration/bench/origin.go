package main

import (
	"encoding/json"
	"maps"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// origin is the upstream registry every contender pulls from. It serves
// manifests from memory and blobs from files, and keeps the counts the
// scenarios judge: how many requests each contender caused, and when a
// blob transfer has ended.
type origin struct {
	URL string
	// PinnedURL reaches the same registry on a second port: airlock
	// refuses two upstreams with one host, and scenario 11 needs a second
	// upstream name for the same content.
	PinnedURL string
	srv       *http.Server

	// rate limits each blob response to this many bytes per second; 0 is
	// unlimited.
	rate atomic.Int64

	mu        sync.Mutex
	manifests map[string]manifest   // "repo:tag" and "digest"
	referrers map[string][]referrer // "repo@digest" of the subject
	trace     []string              // what each request asked for, while tracing
	tracing   bool
	blobs     map[string]string // digest -> file
	requests  int
	blobGETs  map[string]int // digest -> GETs started
	blobHEADs map[string]int // digest -> HEADs answered
	blobDone  map[string]int // digest -> GETs whose response ended
	blobFull  map[string]int // digest -> GETs that sent the whole blob
	written   atomic.Int64
}

type manifest struct {
	mediaType string
	digest    string
	body      []byte
}

// referrer is one entry of a referrers list: a manifest whose subject is
// the listed digest, as the OCI referrers API describes it.
type referrer struct {
	MediaType    string            `json:"mediaType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

func startOrigin() (*origin, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		l.Close()
		return nil, err
	}
	o := &origin{
		URL:       "http://" + l.Addr().String(),
		PinnedURL: "http://" + l2.Addr().String(),
		manifests: map[string]manifest{},
		referrers: map[string][]referrer{},
		blobs:     map[string]string{},
		blobGETs:  map[string]int{},
		blobHEADs: map[string]int{},
		blobDone:  map[string]int{},
		blobFull:  map[string]int{},
	}
	o.srv = &http.Server{Handler: o, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = o.srv.Serve(l) }()
	go func() { _ = o.srv.Serve(l2) }()
	return o, nil
}

func (o *origin) close() { _ = o.srv.Close() }

func (o *origin) addBlob(digest, file string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.blobs[digest] = file
}

// removeBlob stops serving digest.
func (o *origin) removeBlob(digest string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.blobs, digest)
}

// addManifest serves m as repo:tag and by digest; with tag "" by digest
// only, as a pushed signature artifact. A manifest with a subject is
// listed among the subject's referrers in repo.
func (o *origin) addManifest(repo, tag string, m manifest) {
	var parsed struct {
		ArtifactType string `json:"artifactType"`
		Config       struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
		Subject *struct {
			Digest string `json:"digest"`
		} `json:"subject"`
		Annotations map[string]string `json:"annotations"`
	}
	_ = json.Unmarshal(m.body, &parsed)
	o.mu.Lock()
	defer o.mu.Unlock()
	if tag != "" {
		o.manifests[repo+":"+tag] = m
	}
	o.manifests[m.digest] = m
	if parsed.Subject != nil {
		at := parsed.ArtifactType
		if at == "" {
			at = parsed.Config.MediaType // what registries list for an artifact without one
		}
		key := repo + "@" + parsed.Subject.Digest
		o.referrers[key] = append(o.referrers[key], referrer{MediaType: m.mediaType, Digest: m.digest,
			Size: int64(len(m.body)), ArtifactType: at, Annotations: parsed.Annotations})
	}
}

// startTrace begins recording what each request asks for; stopTrace ends
// it and returns the record.
func (o *origin) startTrace() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.trace, o.tracing = nil, true
}

func (o *origin) stopTrace() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.tracing = false
	return o.trace
}

// requestKind names what a request asked for, for the trace: "GET
// manifest by tag", "GET blob", "GET referrers".
func requestKind(method, path string) string {
	switch i := strings.LastIndex(path, "/manifests/"); {
	case i >= 0:
		ref := path[i+len("/manifests/"):]
		switch {
		case strings.HasSuffix(ref, ".sig"):
			return method + " signature tag"
		case strings.HasPrefix(ref, "sha256:"):
			return method + " manifest by digest"
		case strings.HasPrefix(ref, "sha256-"):
			return method + " referrers tag"
		}
		return method + " manifest by tag"
	case strings.Contains(path, "/blobs/"):
		return method + " blob"
	case strings.Contains(path, "/referrers/"):
		return method + " referrers"
	}
	return method + " " + path
}

func (o *origin) manifestBytes(digest string) []byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.manifests[digest].body
}

// counts is a snapshot of what the origin has seen.
type counts struct {
	requests  int
	blobGETs  map[string]int
	blobHEADs map[string]int
}

func (o *origin) snapshot() counts {
	o.mu.Lock()
	defer o.mu.Unlock()
	return counts{requests: o.requests, blobGETs: maps.Clone(o.blobGETs), blobHEADs: maps.Clone(o.blobHEADs)}
}

// blobState reports how many GETs of digest started, how many ended and
// how many of those sent the whole blob.
func (o *origin) blobState(digest string) (started, ended, full int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.blobGETs[digest], o.blobDone[digest], o.blobFull[digest]
}

// waitBlobIdle waits until every GET of digest has ended, so a scenario
// starts only after the transfers of the previous one are over.
func (o *origin) waitBlobIdle(digest string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if s, e, _ := o.blobState(digest); s == e {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	o.mu.Lock()
	o.requests++
	if o.tracing {
		o.trace = append(o.trace, requestKind(r.Method, p))
	}
	o.mu.Unlock()
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		return
	}
	if i := strings.LastIndex(p, "/manifests/"); strings.HasPrefix(p, "/v2/") && i > 0 {
		o.serveManifest(w, r, p[len("/v2/"):i], p[i+len("/manifests/"):])
		return
	}
	if i := strings.LastIndex(p, "/blobs/"); strings.HasPrefix(p, "/v2/") && i > 0 {
		o.serveBlob(w, r, p[i+len("/blobs/"):])
		return
	}
	if i := strings.LastIndex(p, "/referrers/"); strings.HasPrefix(p, "/v2/") && i > 0 {
		o.serveReferrers(w, r, p[len("/v2/"):i], p[i+len("/referrers/"):])
		return
	}
	http.NotFound(w, r)
}

func (o *origin) serveManifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	key := ref
	if !strings.HasPrefix(ref, "sha256:") {
		key = repo + ":" + ref
	}
	o.mu.Lock()
	m, ok := o.manifests[key]
	o.mu.Unlock()
	if !ok {
		writeNotFound(w, "MANIFEST_UNKNOWN")
		return
	}
	w.Header().Set("Content-Type", m.mediaType)
	w.Header().Set("Docker-Content-Digest", m.digest)
	w.Header().Set("Content-Length", strconv.Itoa(len(m.body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(m.body)
}

// serveReferrers answers the OCI referrers API: an image index of the
// manifests whose subject is digest in repo (empty when there are none),
// filtered by artifactType when asked.
func (o *origin) serveReferrers(w http.ResponseWriter, r *http.Request, repo, digest string) {
	at := r.URL.Query().Get("artifactType")
	o.mu.Lock()
	list := []referrer{}
	for _, d := range o.referrers[repo+"@"+digest] {
		if at == "" || d.ArtifactType == at {
			list = append(list, d)
		}
	}
	o.mu.Unlock()
	body, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": mediaIndex, "manifests": list})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if at != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	w.Header().Set("Content-Type", mediaIndex)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

func (o *origin) serveBlob(w http.ResponseWriter, r *http.Request, digest string) {
	o.mu.Lock()
	file, ok := o.blobs[digest]
	if ok && r.Method == http.MethodGet {
		o.blobGETs[digest]++
	}
	if ok && r.Method == http.MethodHead {
		o.blobHEADs[digest]++
	}
	o.mu.Unlock()
	if !ok {
		writeNotFound(w, "BLOB_UNKNOWN")
		return
	}
	cw := &countingWriter{ResponseWriter: w, total: &o.written}
	if r.Method == http.MethodGet {
		defer func() {
			o.mu.Lock()
			o.blobDone[digest]++
			if fi, err := os.Stat(file); err == nil && cw.n == fi.Size() {
				o.blobFull[digest]++
			}
			o.mu.Unlock()
		}()
	}
	f, err := os.Open(file)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Content-Type", "application/octet-stream")
	var out http.ResponseWriter = cw
	if rate := o.rate.Load(); rate > 0 {
		out = &throttledWriter{ResponseWriter: out, rate: rate, start: time.Now()}
	}
	http.ServeContent(out, r, "", fi.ModTime(), f)
}

func writeNotFound(w http.ResponseWriter, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write([]byte(`{"errors":[{"code":"` + code + `","message":"not found"}]}`))
}

// countingWriter adds the body bytes written to n. It hides io.ReaderFrom,
// so the origin copies through user space: it stands in for a distant
// registry, whose speed is not what is measured; the local limit is the
// ceiling's job.
type countingWriter struct {
	http.ResponseWriter
	total *atomic.Int64
	n     int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.total.Add(int64(n))
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Flush() { http.NewResponseController(c.ResponseWriter).Flush() }

// throttledWriter paces a response to rate bytes per second, in pieces
// small enough that a reader sees a steady trickle rather than bursts.
type throttledWriter struct {
	http.ResponseWriter
	rate  int64
	start time.Time
	sent  int64
}

func (t *throttledWriter) Write(p []byte) (int, error) {
	const piece = 32 << 10
	written := 0
	for len(p) > 0 {
		n := min(piece, len(p))
		m, err := t.ResponseWriter.Write(p[:n])
		written += m
		t.sent += int64(m)
		if err != nil {
			return written, err
		}
		http.NewResponseController(t.ResponseWriter).Flush()
		p = p[n:]
		due := t.start.Add(time.Duration(float64(t.sent) / float64(t.rate) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
	}
	return written, nil
}

func (t *throttledWriter) Flush() { http.NewResponseController(t.ResponseWriter).Flush() }
