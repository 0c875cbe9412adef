package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// TestEmptyRangeWaitsForTheDigest: a response with no bytes to send has no
// last byte to hold back, and must still not complete before the digest
// matched: a blob whose upstream announces it empty (Content-Length: 0),
// or a peer resuming at the blob's end, would otherwise be answered in
// full before the fill found out the bytes are wrong.
func TestEmptyRangeWaitsForTheDigest(t *testing.T) {
	t.Parallel()
	blobs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("a blob that is not empty")
	for _, tc := range []struct {
		name         string
		written      int64
		off, end     int64
		verified     bool
		err          error
		wantReturned bool
	}{
		{"empty blob, unverified", 0, 0, 0, false, nil, false},
		{"at the end, unverified", int64(len(content)), int64(len(content)), int64(len(content)), false, nil, false},
		{"empty blob, verified", 0, 0, 0, true, nil, true},
		{"empty blob, failed", 0, 0, 0, false, errors.New("digest mismatch"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := digest.FromBytes(content)
			s, err := blobs.NewSpool(d)
			if err != nil {
				t.Fatal(err)
			}
			defer blobs.Discard(s)
			if _, err := s.Write(content[:tc.written]); err != nil {
				t.Fatal(err)
			}
			f := &fill{digest: d, wake: make(chan struct{}), started: true, size: tc.end, spool: s,
				written: tc.written, verified: tc.verified, err: tc.err, done: tc.err != nil}
			done := make(chan error, 1)
			go func() { done <- f.copyRange(t.Context(), io.Discard, tc.off, tc.end) }()
			select {
			case err := <-done:
				if !tc.wantReturned {
					t.Fatalf("copyRange = %v before the digest was checked; want it to wait", err)
				}
				if !errors.Is(err, tc.err) {
					t.Fatalf("copyRange = %v; want %v", err, tc.err)
				}
				return
			case <-time.After(100 * time.Millisecond):
				if tc.wantReturned {
					t.Fatal("copyRange still waiting on a fill that ended")
				}
			}
			mismatch := fmt.Errorf("blob %s: spool holds another digest", d)
			f.update(func() { f.done, f.err = true, mismatch })
			select {
			case err := <-done:
				if !errors.Is(err, mismatch) {
					t.Fatalf("copyRange = %v once the digest failed; want the fill's error", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("copyRange did not end with the fill")
			}
		})
	}
}

// TestUpstreamAnnouncingAnEmptyBlobIsNotServed: an upstream that answers a
// blob request with no body (Content-Length: 0) never has airlock answer
// 200 with an empty body for a digest of content that is not empty.
func TestUpstreamAnnouncingAnEmptyBlobIsNotServed(t *testing.T) {
	t.Parallel()
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/blobs/") {
				w.Header().Set("Content-Length", "0")
				w.WriteHeader(http.StatusOK)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	e := newEnv(t, o)
	// The answer races the fill's failure: the more pulls, the surer a
	// complete answer before the digest was checked shows up.
	for i := range 40 {
		d := digest.FromString(fmt.Sprint("not empty ", i))
		resp, err := http.Get(e.srv.URL + "/v2/library/app/blobs/" + d.String())
		if err != nil {
			continue // aborted: the honest signal
		}
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && rerr == nil {
			t.Fatalf("pull %d of %s: 200 with %d bytes %q; want an error", i, d, len(body), bytes.TrimSpace(body))
		}
	}
	// The empty blob itself is served, once its digest matched.
	if resp, body := e.get(t, "/v2/library/app/blobs/"+digest.FromBytes(nil).String()); resp.StatusCode != http.StatusOK || len(body) != 0 {
		t.Fatalf("pull of the empty blob: %d, %d bytes; want 200 and none", resp.StatusCode, len(body))
	}
}

// TestUnknownLengthEndsWhenVerified: a response of unknown length (the
// upstream sent no Content-Length and no manifest declared a size) ends
// once every byte is out and the digest matched, as one of known length
// does: the fill's commit, an fsync or a whole upload to object storage,
// is the cache's business, not the client's wait.
func TestUnknownLengthEndsWhenVerified(t *testing.T) {
	t.Parallel()
	blobs, err := storage.NewFilesystem(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("layer"), 50_000)
	d := digest.FromBytes(content)
	s, err := blobs.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Discard(s)
	if _, err := s.Write(content); err != nil {
		t.Fatal(err)
	}
	f := &fill{digest: d, wake: make(chan struct{}), started: true, size: -1, spool: s, written: int64(len(content))}
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- f.copyRange(t.Context(), &out, 0, -1) }()
	select {
	case err := <-done:
		t.Fatalf("copyRange = %v before the digest was checked", err)
	case <-time.After(50 * time.Millisecond):
	}
	f.update(func() { f.verified = true }) // the commit is still to come
	select {
	case err := <-done:
		if err != nil || !bytes.Equal(out.Bytes(), content) {
			t.Fatalf("copyRange = %v after %d of %d bytes", err, out.Len(), len(content))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a response of unknown length waits for the fill's commit")
	}
}
