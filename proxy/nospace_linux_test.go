package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/airlock-registry/airlock/storage"
)

// tinyVolume mounts a tmpfs of size bytes: a real volume that fills up.
// Under CI a failure to mount fails the test instead of skipping it.
func tinyVolume(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mounting a tmpfs to test a full cache volume: %v (run the tests as root)", err)
		}
		t.Skipf("cannot mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// TestFullCacheVolumeServesWithoutCaching: with the cache volume full, a
// blob is still served whole and verified, straight from the upstream;
// nothing partial is left in the store, the evictor is asked for room, and
// the next requests skip the cache until the volume had time to drain.
func TestFullCacheVolumeServesWithoutCaching(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		length bool // whether the upstream announces Content-Length
	}{{"announced length", true}, {"no length", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := newOriginWrapped(t, func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if tc.length || !strings.Contains(r.URL.Path, "/blobs/") || r.Method != http.MethodGet {
						next.ServeHTTP(w, r)
						return
					}
					// Flushing before the handler ends drops Content-Length.
					next.ServeHTTP(&flushingWriter{ResponseWriter: w}, r)
				})
			})
			img, _ := random.Image(3<<20, 1)
			o.push(t, "library/app:1", img)
			ld, want := layerOf(t, img, 0)
			vol := tinyVolume(t, 2<<20)
			blobs, err := storage.NewFilesystem(vol)
			if err != nil {
				t.Fatal(err)
			}
			var nudged atomic.Int32
			e := newPairEnv(t, o, newOrigin(t, true), pairOptions{blobs: blobs, onNoSpace: func() { nudged.Add(1) }})
			path := "/v2/library/app/blobs/" + ld.String()

			resp, err := http.Get(e.srv.URL + path)
			switch {
			case err != nil && tc.length:
				t.Fatal(err)
			case err != nil:
				// Without a length nothing could be reserved: the volume
				// filled up mid-transfer and the response was aborted,
				// maybe before its headers left.
			default:
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case tc.length && (resp.StatusCode != 200 || rerr != nil || !bytes.Equal(body, want)):
					t.Fatalf("first pull on a full volume: %d, %d bytes, %v; want the whole blob", resp.StatusCode, len(body), rerr)
				case !tc.length && rerr == nil && resp.StatusCode == 200 && !bytes.Equal(body, want):
					t.Fatalf("first pull completed with %d wrong bytes", len(body))
				}
			}
			// Whatever the first pull got, the next ones are whole.
			for range 2 {
				if resp, body := e.get(t, path); resp.StatusCode != 200 || !bytes.Equal(body, want) {
					t.Fatalf("pull on a full volume: %d, %d bytes", resp.StatusCode, len(body))
				}
			}
			if _, err := e.blobs.Stat(t.Context(), digest.Digest(ld.String())); err == nil {
				t.Fatal("a blob larger than the volume was committed")
			}
			var left []string
			filepath.Walk(vol, func(p string, fi os.FileInfo, err error) error {
				if err == nil && !fi.IsDir() {
					left = append(left, p)
				}
				return nil
			})
			if len(left) != 0 {
				t.Fatalf("files left on the full volume: %v", left)
			}
			// Announced, the blob was found larger than the room left
			// before a byte was written, which is no reason to shrink the
			// cache; unannounced, it filled the volume.
			if n := nudged.Load(); tc.length != (n == 0) {
				t.Errorf("the evictor was asked to make room %d times", n)
			}
			if n := testutil.ToFloat64(e.metrics.uncached.WithLabelValues("hub")); n < 2 {
				t.Errorf("airlock_uncached_blob_requests_total = %v, want at least 2", n)
			}
			if n := strings.Count(e.logText(), "cache volume full"); n != 1 {
				t.Errorf("%d log lines say the volume is full, want 1 for the episode", n)
			}
			if n := strings.Count(e.logText(), `"msg":"blob fill started"`); n != 1 {
				t.Errorf("%d fills started; after the first the cache should be skipped", n)
			}
		})
	}
}

// TestPassThroughHoldsBackTheLastByte: a pass-through copy of a tampered
// blob never reaches the client whole.
func TestPassThroughHoldsBackTheLastByte(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 2, passChunk, passChunk + 1, 3*passChunk + 7} {
		data := bytes.Repeat([]byte{7}, n)
		var out bytes.Buffer
		if err := copyHoldingLastByte(&out, bytes.NewReader(data)); err != nil || !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("%d bytes: copied %d, %v", n, out.Len(), err)
		}
		if n == 0 {
			continue
		}
		out.Reset()
		err := copyHoldingLastByte(&out, io.MultiReader(bytes.NewReader(data), errReader{}))
		if err == nil || out.Len() != n-1 {
			t.Fatalf("%d bytes then an error: copied %d, %v; want %d and the error", n, out.Len(), err, n-1)
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, fmt.Errorf("digest mismatch at EOF") }

// flushingWriter drops Content-Length and flushes after every write, so
// the response is chunked.
type flushingWriter struct{ http.ResponseWriter }

func (f *flushingWriter) WriteHeader(code int) {
	f.Header().Del("Content-Length")
	f.ResponseWriter.WriteHeader(code)
}

func (f *flushingWriter) Write(b []byte) (int, error) {
	n, err := f.ResponseWriter.Write(b)
	f.ResponseWriter.(http.Flusher).Flush()
	return n, err
}

// TestFullVolumeServesManifests: the metadata index shares the cache
// volume, so once the volume is full the index cannot grow either. Pulls
// must go on: a verified manifest that cannot be stored is served
// uncached, and a blob's confirmation by the repository's own upstream
// holds for the request even when it cannot be recorded.
func TestFullVolumeServesManifests(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	const images = 40
	var imgs []v1.Image
	for i := range images {
		img, _ := random.Image(512, 2)
		o.push(t, fmt.Sprintf("library/app%d:1", i), img)
		imgs = append(imgs, img)
	}
	vol := tinyVolume(t, 1<<20)
	blobs, err := storage.NewFilesystem(vol)
	if err != nil {
		t.Fatal(err)
	}
	var nudged atomic.Int32
	e := newPairEnv(t, o, newOrigin(t, true), pairOptions{blobs: blobs, metaDir: vol, onNoSpace: func() { nudged.Add(1) }})
	// A layer cached before the volume filled up, which another
	// repository then asks for: its upstream must vouch, and the answer
	// cannot be recorded.
	cachedLayer, cachedData := layerOf(t, imgs[0], 1)
	if resp, _ := e.get(t, "/v2/library/app0/blobs/"+cachedLayer.String()); resp.StatusCode != 200 {
		t.Fatalf("caching a layer: %d", resp.StatusCode)
	}
	o.push(t, "library/twin:1", imgs[0])
	fillVolume(t, vol)

	accept := "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
	for i, img := range imgs {
		want, _ := img.RawManifest()
		resp, body := e.get(t, fmt.Sprintf("/v2/library/app%d/manifests/1", i), "Accept", accept)
		if resp.StatusCode != 200 || !bytes.Equal(body, want) {
			t.Fatalf("manifest %d on a full volume: %d %s", i, resp.StatusCode, body)
		}
		ld, data := layerOf(t, img, 0)
		resp, body = e.get(t, fmt.Sprintf("/v2/library/app%d/blobs/%s", i, ld))
		if resp.StatusCode != 200 || !bytes.Equal(body, data) {
			t.Fatalf("layer %d on a full volume: %d, %d bytes", i, resp.StatusCode, len(body))
		}
	}
	// By now the index is full too.
	if resp, body := e.get(t, "/v2/library/twin/blobs/"+cachedLayer.String()); resp.StatusCode != 200 || !bytes.Equal(body, cachedData) {
		t.Fatalf("a cached layer confirmed for another repository on a full volume: %d, %d bytes", resp.StatusCode, len(body))
	}
	if nudged.Load() == 0 {
		t.Error("the evictor was not asked to make room")
	}
}

// fillVolume writes a file into dir until its volume is full.
func fillVolume(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

// TestHeadAlongAFillThatFindsTheVolumeFull: a HEAD that joined a fill
// which then found no room asks the upstream whether the blob exists; it
// does not download the blob to throw the bytes away.
func TestHeadAlongAFillThatFindsTheVolumeFull(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	o := newOriginWrapped(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				<-release // the HEAD joins the fill meanwhile
			}
			next.ServeHTTP(w, r)
		})
	})
	img, _ := random.Image(3<<20, 1)
	o.push(t, "library/app:1", img)
	ld, data := layerOf(t, img, 0)
	vol := tinyVolume(t, 2<<20)
	blobs, err := storage.NewFilesystem(vol)
	if err != nil {
		t.Fatal(err)
	}
	e := newPairEnv(t, o, newOrigin(t, true), pairOptions{blobs: blobs})
	path := "/v2/library/app/blobs/" + ld.String()
	got := make(chan int, 1)
	go func() {
		resp, _ := e.get(t, path)
		got <- resp.StatusCode
	}()
	for o.count(http.MethodGet, path) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	head := make(chan *http.Response, 1)
	go func() {
		resp, _ := e.do(t, http.MethodHead, path)
		head <- resp
	}()
	// Let the HEAD reach the fill before the upstream answers the GET.
	time.Sleep(200 * time.Millisecond)
	close(release)
	if resp := <-head; resp.StatusCode != 200 || resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) {
		t.Fatalf("HEAD along a fill that found the volume full: %d, length %q", resp.StatusCode, resp.Header.Get("Content-Length"))
	}
	if code := <-got; code != 200 {
		t.Fatalf("GET that started the fill: %d", code)
	}
	// The fill's GET and the GET's own pass-through; none for the HEAD.
	if n := o.count(http.MethodGet, path); n != 2 {
		t.Errorf("upstream served the blob %d times; a HEAD must not download it", n)
	}
}

// TestOneBlobTooLargeForTheVolumeLeavesTheCacheOn: a blob larger than the
// room left is served uncached, but the volume is not full for the blobs
// that fit: they are still cached. Otherwise pulling one huge layer (or a
// client asking for one, every 30 seconds) would turn caching off for
// every blob of every upstream.
func TestOneBlobTooLargeForTheVolumeLeavesTheCacheOn(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, true)
	big, _ := random.Image(3<<20, 1)
	small, _ := random.Image(64<<10, 1)
	o.push(t, "library/big:1", big)
	o.push(t, "library/small:1", small)
	bd, bdata := layerOf(t, big, 0)
	sd, sdata := layerOf(t, small, 0)
	vol := tinyVolume(t, 2<<20)
	blobs, err := storage.NewFilesystem(vol)
	if err != nil {
		t.Fatal(err)
	}
	e := newPairEnv(t, o, newOrigin(t, true), pairOptions{blobs: blobs})
	for range 2 {
		if resp, body := e.get(t, "/v2/library/big/blobs/"+bd.String()); resp.StatusCode != 200 || !bytes.Equal(body, bdata) {
			t.Fatalf("a blob larger than the volume: %d, %d bytes", resp.StatusCode, len(body))
		}
	}
	if resp, body := e.get(t, "/v2/library/small/blobs/"+sd.String()); resp.StatusCode != 200 || !bytes.Equal(body, sdata) {
		t.Fatalf("a small blob: %d, %d bytes", resp.StatusCode, len(body))
	}
	// The commit follows the client's last byte.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := e.blobs.Stat(t.Context(), digest.Digest(sd.String()))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a blob that fits was not cached after another did not fit: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := e.blobs.Stat(t.Context(), digest.Digest(bd.String())); err == nil {
		t.Fatal("a blob larger than the volume was committed")
	}
}

// rawBlobOrigin is an upstream holding one blob of size random bytes,
// served with its length from memory (cheaper than a registry of
// go-containerregistry's, pushed a random image, when the blob is large);
// wrap, when set, wraps the response writer of the blob's GETs.
func rawBlobOrigin(t *testing.T, size int, wrap func(http.ResponseWriter) http.ResponseWriter) (*origin, digest.Digest, []byte) {
	t.Helper()
	blob := make([]byte, size)
	_, _ = mrand.NewChaCha8([32]byte{byte(size), byte(size >> 8), byte(size >> 16)}).Read(blob)
	d := digest.FromBytes(blob)
	o := &origin{counts: map[string]int{}}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			if r.URL.Path == "/v2/" {
				w.WriteHeader(http.StatusOK)
				return
			}
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Docker-Content-Digest", d.String())
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		if r.Method == http.MethodHead {
			return
		}
		if wrap != nil {
			w = wrap(w)
		}
		w.Write(blob)
	}))
	t.Cleanup(o.srv.Close)
	return o, d, blob
}

// slowClient is an HTTP client whose sockets take in little: a client that
// stops reading soon holds the server's sendfile waiting.
func slowClient(t *testing.T) *http.Client {
	small := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	c := &http.Client{Transport: &http.Transport{DialContext: small.DialContext, DisableCompression: true}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// breakingWriter aborts the response once after bytes of body.
type breakingWriter struct {
	http.ResponseWriter
	after, n int
}

func (b *breakingWriter) Write(p []byte) (int, error) {
	if b.n+len(p) > b.after {
		b.ResponseWriter.Write(p[:b.after-b.n])
		b.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	b.n += len(p)
	return b.ResponseWriter.Write(p)
}

// TestFailedFillGivesItsRoomBack: a fill that fails gives the cache volume
// back the room it took, its reservation included, at once, even while a
// client that stopped reading still holds the response, its sendfile
// waiting on a handle of its own on the spool. Otherwise any client could
// keep a failed fill's room taken, unseen by the cache's accounting, for
// as long as it kept the connection open.
func TestFailedFillGivesItsRoomBack(t *testing.T) {
	t.Parallel()
	const layer, breakAt, volume = 12 << 20, 8 << 20, 32 << 20
	o, d, _ := rawBlobOrigin(t, layer, func(w http.ResponseWriter) http.ResponseWriter {
		return &breakingWriter{ResponseWriter: w, after: breakAt}
	})
	vol := tinyVolume(t, volume)
	blobs, err := storage.NewFilesystem(vol)
	if err != nil {
		t.Fatal(err)
	}
	e := newPairEnv(t, o, newOrigin(t, true), pairOptions{blobs: blobs})
	free := func() int64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(vol, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.srv.URL+"/v2/library/app/blobs/"+d.String(), nil)
	slow, err := slowClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	if slow.StatusCode != http.StatusOK {
		t.Fatalf("pull: %s", slow.Status)
	}
	waitFilled(t, e.proxy, d)
	deadline := time.Now().Add(10 * time.Second)
	for free() < volume-volume/8 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes free on the cache volume after the fill failed; its room is still taken", free(), volume)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if body, err := io.ReadAll(slow.Body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("the client of the failed fill read %d bytes, %v; want the response aborted", len(body), err)
	}
}

// gatedBody holds a response body at half its length until gate closes,
// and closes half when it gets there.
type gatedBody struct {
	http.ResponseWriter
	at         int
	n          int
	half, gate chan struct{}
}

func (g *gatedBody) Write(p []byte) (int, error) {
	written := 0
	if g.n < g.at && g.n+len(p) >= g.at {
		m, err := g.ResponseWriter.Write(p[:g.at-g.n])
		g.n += m
		written += m
		if err != nil {
			return written, err
		}
		g.ResponseWriter.(http.Flusher).Flush()
		close(g.half)
		<-g.gate
		p = p[m:]
	}
	m, err := g.ResponseWriter.Write(p)
	g.n += m
	return written + m, err
}

// TestVerifiedBlobReachesItsClientsWhenTheCommitFails: once a fill's bytes
// matched the digest, its clients get all of them, however slowly they
// read, even when the commit that follows fails (here the cache volume
// has no inode left for the blob's directories): only the cache lost the
// blob. A client that stopped reading while the commit failed reads on
// to the end.
func TestVerifiedBlobReachesItsClientsWhenTheCommitFails(t *testing.T) {
	t.Parallel()
	const layer = 12 << 20 // well past what the slow client's socket buffers take
	half, gate := make(chan struct{}), make(chan struct{})
	var gateOnce sync.Once
	t.Cleanup(func() { gateOnce.Do(func() { close(gate) }) })
	o, d, want := rawBlobOrigin(t, layer, func(w http.ResponseWriter) http.ResponseWriter {
		return &gatedBody{ResponseWriter: w, at: layer / 2, half: half, gate: gate}
	})
	vol := t.TempDir()
	if err := syscall.Mount("tmpfs", vol, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=32m,nr_inodes=64,mode=0700"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mounting a tmpfs: %v (run the tests as root)", err)
		}
		t.Skipf("cannot mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(vol, syscall.MNT_DETACH) })
	blobs, err := storage.NewFilesystem(vol)
	if err != nil {
		t.Fatal(err)
	}
	e := newPairEnv(t, o, newOrigin(t, true), pairOptions{blobs: blobs})

	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, e.srv.URL+"/v2/library/app/blobs/"+d.String(), nil)
	slow, err := slowClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	if slow.StatusCode != http.StatusOK {
		t.Fatalf("pull: %s", slow.Status)
	}
	<-half
	// No inode left: the commit cannot create the blob's directories.
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(vol, fmt.Sprintf("filler-%d", i)))
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	gateOnce.Do(func() { close(gate) })
	waitFilled(t, e.proxy, d)
	if !strings.Contains(e.logText(), "committing blob") {
		t.Fatalf("the commit did not fail; log:\n%s", e.logText())
	}
	body, err := io.ReadAll(slow.Body)
	if err != nil || !bytes.Equal(body, want) {
		t.Fatalf("the slow client of a verified blob whose commit failed: %d of %d bytes, %v", len(body), len(want), err)
	}
	if _, err := e.blobs.Stat(t.Context(), d); err == nil {
		t.Fatal("the blob was stored")
	}
	// The spool goes once its last reader is done.
	deadline := time.Now().Add(5 * time.Second)
	for blobs.SpoolBytes() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("SpoolBytes = %d after the last reader of a failed commit", blobs.SpoolBytes())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if left, _ := os.ReadDir(filepath.Join(vol, "spool")); len(left) != 0 {
		t.Fatalf("spool files left: %v", left)
	}
}
