package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/cluster"
)

// TestClusterAdversaryPeerMisbehaves: the replica holding a blob's lease
// answers its peers badly: it cuts its stream short of what it announced,
// stalls mid-blob, redirects, announces no size, fails. Its lease never
// lapses (a live, or misconfigured, holder). The follower's client still
// gets the right blob within seconds, from the upstream, and what is
// stored is the blob.
func TestClusterAdversaryPeerMisbehaves(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// send answers the follower's request for blob, announced at its
		// whole size; stop ends a handler that hangs.
		send func(w http.ResponseWriter, r *http.Request, blob []byte, stop <-chan struct{})
		// lies: the peer's bytes are wrong, which the follower finds only
		// once its client has all but the last byte: that pull fails, and
		// the retry must not follow the peer again.
		lies bool
	}{
		{"cuts its stream short of the length it announced", func(w http.ResponseWriter, r *http.Request, blob []byte, _ <-chan struct{}) {
			off, _ := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
			w.Header().Set(cluster.HeaderBlobSize, strconv.Itoa(len(blob)))
			w.Header().Set(cluster.HeaderFillRepository, "hub/library/app")
			// A Content-Length that contradicts the announced size: the
			// stream ends cleanly, short of the blob.
			w.Header().Set("Content-Length", strconv.Itoa(len(blob[off:])/2))
			_, _ = w.Write(blob[off:][:len(blob[off:])/2])
		}, false},
		{"stalls mid-blob", func(w http.ResponseWriter, r *http.Request, blob []byte, stop <-chan struct{}) {
			w.Header().Set(cluster.HeaderBlobSize, strconv.Itoa(len(blob)))
			w.Header().Set(cluster.HeaderFillRepository, "hub/library/app")
			_, _ = w.Write(blob[:len(blob)/3])
			w.(http.Flusher).Flush()
			select {
			case <-stop:
			case <-r.Context().Done():
			}
		}, false},
		{"redirects", func(w http.ResponseWriter, r *http.Request, blob []byte, _ <-chan struct{}) {
			http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusTemporaryRedirect)
		}, false},
		{"announces no size", func(w http.ResponseWriter, r *http.Request, blob []byte, _ <-chan struct{}) {
			_, _ = w.Write(blob)
		}, false},
		{"fails", func(w http.ResponseWriter, r *http.Request, blob []byte, _ <-chan struct{}) {
			http.Error(w, "no", http.StatusInternalServerError)
		}, false},
		{"has neither the fill nor the blob, yet keeps the lease", func(w http.ResponseWriter, r *http.Request, blob []byte, _ <-chan struct{}) {
			http.Error(w, "no fill of that blob runs here", http.StatusNotFound)
		}, false},
		{"sends a wrong blob of the right size, then breaks", func(w http.ResponseWriter, r *http.Request, blob []byte, _ <-chan struct{}) {
			off, _ := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
			w.Header().Set(cluster.HeaderBlobSize, strconv.Itoa(len(blob)))
			w.Header().Set(cluster.HeaderFillRepository, "hub/library/app")
			bad := bytes.Clone(blob[off:])
			bad[0] ^= 0xff
			_, _ = w.Write(bad[:len(bad)/2])
			panic(http.ErrAbortHandler)
		}, true},
		{"sends a wrong blob", func(w http.ResponseWriter, r *http.Request, blob []byte, _ <-chan struct{}) {
			w.Header().Set(cluster.HeaderBlobSize, strconv.Itoa(len(blob)))
			w.Header().Set(cluster.HeaderFillRepository, "hub/library/app")
			bad := bytes.Clone(blob)
			bad[len(bad)-1] ^= 0xff
			_, _ = w.Write(bad)
		}, true},
		{"announces a size over the limit", func(w http.ResponseWriter, r *http.Request, blob []byte, _ <-chan struct{}) {
			w.Header().Set(cluster.HeaderBlobSize, strconv.FormatInt(1<<62, 10))
			w.Header().Set(cluster.HeaderFillRepository, "hub/library/app")
			_, _ = w.Write(blob)
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, false)
			img, err := random.Image(256<<10, 1)
			if err != nil {
				t.Fatal(err)
			}
			o.push(t, "library/app:1", img)
			h, blob := layerOf(t, img, 0)
			d := digest.Digest(h.String())
			stop := make(chan struct{})
			var asked atomic.Int32
			hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				asked.Add(1)
				tc.send(w, r, blob, stop)
			}))
			t.Cleanup(hostile.Close)
			t.Cleanup(func() { close(stop) })
			ttl := 500 * time.Millisecond
			rs, dsn := newCluster(t, o, 1, ttl)
			holdLease(t, dsn, d, hostile.URL)
			o.reset()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			start := time.Now()
			if tc.lies {
				if p := pullBlob(ctx, rs[0], d); p.err == nil || bytes.Equal(p.body, blob) {
					t.Fatalf("the client read along a wrong blob to its end: %d bytes, %v", len(p.body), p.err)
				}
				waitUntil(t, 5*time.Second, func() bool { return strings.Contains(rs[0].logText(), "failed its checks") })
				o.reset()
			}
			if err := pullBlob(ctx, rs[0], d).check(d); err != nil {
				t.Fatalf("pull after %s: %v\n%s", time.Since(start), err, rs[0].logText())
			}
			if n := o.count(http.MethodGet, blobPath(d)); tc.lies && n != 1 {
				// The retry fetches the blob whole from the upstream. (A
				// resume may cost two: this origin ignores ranges.)
				t.Errorf("%d upstream GETs for the retry, want 1", n)
			}
			if took := time.Since(start); took > 15*time.Second {
				t.Errorf("the pull took %s", took)
			}
			if asked.Load() == 0 {
				t.Fatal("the lease's holder was never asked")
			}
			waitUntil(t, 10*time.Second, func() bool {
				_, err := rs[0].blobs.Stat(t.Context(), d)
				return err == nil
			})
			content, _, err := rs[0].blobs.Open(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			stored, _ := io.ReadAll(content)
			content.Close()
			if !bytes.Equal(stored, blob) {
				t.Fatalf("stored %d bytes that are not the blob", len(stored))
			}
		})
	}
}

// peerSecret reads the cluster secret the way an attacker with the
// database would, to ask a replica's peer listener directly.
func peerSecret(t *testing.T, dsn string) string {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var secret string
	if err := pool.QueryRow(t.Context(), "SELECT value FROM airlock_cluster_settings WHERE name = 'peer_secret'").Scan(&secret); err != nil {
		t.Fatal(err)
	}
	return secret
}

// TestClusterAdversaryListenerHoldsBackUnverified: a peer reading a
// running fill whose upstream sends a wrong blob never receives the whole
// of it: the last byte waits for the digest, as for the replica's own
// clients, and the stream breaks instead.
func TestClusterAdversaryListenerHoldsBackUnverified(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, blob := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	o.tamper.Store(d.String(), true)
	rs, dsn := newCluster(t, o, 1, time.Second)
	secret := peerSecret(t, dsn)
	o.slowBlob.Store(int64(20 * time.Millisecond))
	client := make(chan pull, 1)
	go func() { client <- pullBlob(t.Context(), rs[0], d) }()
	waitUntil(t, 5*time.Second, func() bool { return rs[0].proxy.fills.running(d) })
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, rs[0].peer.URL+"/v1/fills/hub/"+d.String()+"?offset=0", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, rerr := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && rerr == nil && len(got) == len(blob) {
		t.Fatalf("the peer listener completed a %d byte blob whose digest does not match", len(got))
	}
	if p := <-client; p.err == nil && len(p.body) == len(blob) {
		t.Fatal("the client received the whole wrong blob")
	}
	if _, err := rs[0].blobs.Stat(t.Context(), d); err == nil {
		t.Fatal("a wrong blob was stored")
	}
	if !strings.Contains(rs[0].logText(), "digest") {
		t.Fatalf("the fill's failure does not name the digest:\n%s", rs[0].logText())
	}
}

// TestClusterAdversaryLeaderEndsBetweenClaimAndRead: the peer holding the
// lease answers that its fill ended (it left its fill set) and gives the
// lease up a moment later, as a leader whose fill failed does. The
// follower must take the lease and fetch under it, not run out of claims
// while the release is on its way and fetch with no lease at all, which
// lets every other replica fetch the blob too.
func TestClusterAdversaryLeaderEndsBetweenClaimAndRead(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, _ := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	rs, dsn := newCluster(t, o, 1, time.Second)
	admin, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	var once sync.Once
	ended := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() {
			go func() {
				time.Sleep(40 * time.Millisecond)
				_, _ = admin.Exec(context.Background(), "UPDATE airlock_cluster_fills SET expires = now() - interval '1 millisecond' WHERE owner = 'elsewhere'")
			}()
		})
		http.Error(w, "no fill of that blob runs here", http.StatusNotFound)
	}))
	t.Cleanup(ended.Close)
	holdLease(t, dsn, d, ended.URL)
	if err := pullBlob(t.Context(), rs[0], d).check(d); err != nil {
		t.Fatal(err)
	}
	if n := rs[0].counter(t, "airlock_cluster_fills_led_total"); n != 1 {
		t.Fatalf("the fill led %v times under the lease, want 1: it fetched without the lease\n%s", n, rs[0].logText())
	}
}

// TestClusterAdversaryPeerStoreAnswerNeedsOwnUpstream: the lease's holder
// answers from its store (no fill repository) with the right bytes of a
// blob this replica's shared store lacks (the holder's local copy of a
// blob evicted since). This replica's repository may have it only if its
// own upstream vouches for it: the right bytes are not enough, or a blob
// of any repository would be readable through every other.
func TestClusterAdversaryPeerStoreAnswerNeedsOwnUpstream(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, false)
	img, err := random.Image(64<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	o.push(t, "library/app:1", img)
	h, blob := layerOf(t, img, 0)
	d := digest.Digest(h.String())
	o.hidden.Store(blobPath(d), true) // this repository's upstream lacks it
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(cluster.HeaderBlobSize, strconv.Itoa(len(blob)))
		w.Header().Set(cluster.HeaderFillRepository, "")
		_, _ = w.Write(blob)
	}))
	t.Cleanup(peer.Close)
	rs, dsn := newCluster(t, o, 1, time.Second)
	holdLease(t, dsn, d, peer.URL)
	p := pullBlob(t.Context(), rs[0], d)
	if p.err == nil || !strings.Contains(p.err.Error(), "HTTP 404") {
		t.Fatalf("pull through a repository whose upstream lacks the blob: %d bytes, %v; want 404", len(p.body), p.err)
	}
	if _, err := rs[0].blobs.Stat(t.Context(), d); err == nil {
		t.Fatal("the blob was stored from a peer's answer no upstream vouched for")
	}
	if n := o.count(http.MethodHead, blobPath(d)); n == 0 {
		t.Fatal("this repository's upstream was never asked")
	}
}
