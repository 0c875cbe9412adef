package proxy

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage"
)

// spoolHandles lists this process's open files in dir.
func spoolHandles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, dir) {
			open = append(open, l)
		}
	}
	return open
}

// TestFailedFillLeavesNothing: however an upstream fails a blob (before
// its headers, with a body too short, too long or wrong), the fill's spool
// is gone afterwards, opened while the upstream answered or not: no file,
// no handle, no reserved room, no blob; and the failure is logged for the
// right reason.
func TestFailedFillLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, body []byte)
		status int    // the client's status, 0 for a broken response
		reason string // in the fill's log line; "" when no fill started
	}{
		{"not found", func(w http.ResponseWriter, _ []byte) { w.WriteHeader(http.StatusNotFound) }, http.StatusNotFound, ""},
		{"server error", func(w http.ResponseWriter, _ []byte) { w.WriteHeader(http.StatusInternalServerError) }, http.StatusServiceUnavailable, ""},
		{"short body", func(w http.ResponseWriter, body []byte) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body[:len(body)/2])
		}, 0, "unexpected EOF"},
		{"another length announced", func(w http.ResponseWriter, body []byte) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)-1))
			w.Write(body[1:])
		}, http.StatusBadGateway, ""},
		{"long body", func(w http.ResponseWriter, body []byte) {
			// Flushed before the end: chunked, with no length to check.
			w.Write(body)
			w.(http.Flusher).Flush()
			w.Write([]byte("and more"))
		}, 0, "bytes allowed for this blob"},
		{"wrong bytes", func(w http.ResponseWriter, body []byte) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(bytes.Repeat([]byte{'x'}, len(body)))
		}, 0, "digest mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var body []byte
			o := newOriginWrapped(t, func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") && body != nil {
						tc.answer(w, body)
						return
					}
					next.ServeHTTP(w, r)
				})
			})
			img, _ := random.Image(1<<20, 1)
			o.push(t, "library/app:1", img)
			ld, content := layerOf(t, img, 0)
			body = content
			dir := t.TempDir()
			blobs, err := storage.NewFilesystem(dir)
			if err != nil {
				t.Fatal(err)
			}
			e := newPairEnv(t, o, newOrigin(t, true), pairOptions{blobs: blobs})
			// The manifest declares the layer's size, so the spool is opened
			// and room reserved while the upstream answers.
			if resp, _ := e.get(t, "/v2/library/app/manifests/1"); resp.StatusCode != http.StatusOK {
				t.Fatalf("manifest: %d", resp.StatusCode)
			}
			resp, err := http.Get(e.srv.URL + "/v2/library/app/blobs/" + ld.String())
			status := 0
			if err == nil {
				got, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if rerr == nil {
					status = resp.StatusCode
				}
				if rerr == nil && resp.StatusCode == http.StatusOK {
					t.Fatalf("pull answered 200 with %d bytes", len(got))
				}
			}
			if tc.status != 0 && status != tc.status {
				t.Fatalf("pull: status %d; want %d", status, tc.status)
			}
			waitFilled(t, e.proxy, digest.Digest(ld.String()))
			if tc.reason != "" && !strings.Contains(e.logText(), tc.reason) {
				t.Fatalf("no fill failed for %q; log:\n%s", tc.reason, e.logText())
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				left, _ := os.ReadDir(filepath.Join(dir, "spool"))
				open := spoolHandles(t, filepath.Join(dir, "spool"))
				if len(left) == 0 && len(open) == 0 && blobs.SpoolBytes() == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after the fill failed: spool files %v, open handles %v, SpoolBytes %d", left, open, blobs.SpoolBytes())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if _, err := blobs.Stat(t.Context(), digest.Digest(ld.String())); err == nil {
				t.Fatal("the failed blob was stored")
			}
		})
	}
}
