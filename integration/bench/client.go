package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net/http"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"
)

// client is the puller every contender is measured with: one keep-alive
// pool large enough that no scenario waits for a connection, and no
// transparent compression.
type client struct {
	http *http.Client
	// readSize is how much one Read of a body asks for.
	readSize int
}

func newClient() *client {
	tr := &http.Transport{
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 512,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		// Reads of large bodies happen in 256 KiB pieces below; a larger
		// socket read buffer saves the client CPU it shares with servers.
		ReadBufferSize: 256 << 10,
	}
	return &client{http: &http.Client{Transport: tr}, readSize: 256 << 10}
}

// newReader returns a client whose every Read of a body asks the socket
// for readSize bytes, the way container runtimes read layers: Docker's
// io.Copy reads 32 KiB at a time, containerd's content copy 1 MiB. Its
// transport keeps the default 4 KiB read buffer, which a larger Read
// bypasses, so what the server sees is the runtime's read size.
func newReader(readSize int) *client {
	tr := &http.Transport{
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 512,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	return &client{http: &http.Client{Transport: tr}, readSize: readSize}
}

// check is how fetch checks the body it reads.
type check int

const (
	noCheck check = iota
	// checkDigest hashes the body with sha256, the digest a registry
	// names it by.
	checkDigest
	// checkCRC sums the body with CRC-32C, which the CPU computes at many
	// GB/s: a contender serving wrong bytes still fails the run, and the
	// client's check takes little of the 2 cores it shares with the
	// servers it measures.
	checkCRC
)

// fetchResult is what one GET measured.
type fetchResult struct {
	ttfb, total time.Duration
	bytes       int64
	digest      string // sha256 of the body, when asked for
	crc         uint32 // CRC-32C of the body, when asked for
}

// fetch GETs url, timing the first body byte and the end of the body, and
// checks the body as ck says, so a contender serving wrong bytes fails the
// run instead of winning it.
func (c *client) fetch(ctx context.Context, url string, ck check, hdr ...string) (fetchResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fetchResult{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return fetchResult{}, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fetchResult{}, fmt.Errorf("GET %s: HTTP %d: %s", url, resp.StatusCode, b)
	}
	var h hash.Hash
	var sum hash.Hash32
	var sink io.Writer = io.Discard
	switch ck {
	case checkDigest:
		h = sha256.New()
		sink = h
	case checkCRC:
		sum = crc32.New(castagnoli)
		sink = sum
	}
	buf := make([]byte, c.readSize)
	var r fetchResult
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if r.bytes == 0 {
				r.ttfb = time.Since(start)
			}
			r.bytes += int64(n)
			_, _ = sink.Write(buf[:n])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return r, fmt.Errorf("read %s after %d bytes: %w", url, r.bytes, err)
		}
	}
	r.total = time.Since(start)
	if h != nil {
		r.digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	}
	if sum != nil {
		r.crc = sum.Sum32()
	}
	return r, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// fetchBlob GETs a blob and checks its digest.
func (c *client) fetchBlob(ctx context.Context, base, repo string, b blob) (fetchResult, error) {
	r, err := c.fetch(ctx, base+"/v2/"+repo+"/blobs/"+b.Digest, checkDigest)
	if err == nil && r.digest != b.Digest {
		err = fmt.Errorf("blob %s from %s: got content with digest %s", b.Digest, base, r.digest)
	}
	return r, err
}

// fetchBlobCRC GETs a seeded blob and checks its CRC-32C and length: the
// check of timed transfers, which must leave the CPU to the servers.
func (c *client) fetchBlobCRC(ctx context.Context, base, repo string, b blob) (fetchResult, error) {
	r, err := c.fetch(ctx, base+"/v2/"+repo+"/blobs/"+b.Digest, checkCRC)
	if err == nil && (r.crc != b.CRC || r.bytes != b.Size) {
		err = fmt.Errorf("blob %s from %s: got %d bytes with CRC-32C %08x, want %d with %08x", b.Digest, base, r.bytes, r.crc, b.Size, b.CRC)
	}
	return r, err
}

// pull does what a container runtime does for one image: resolve the tag
// to a manifest, then fetch the config and every layer concurrently,
// verifying each. It returns the wall time.
func (c *client) pull(ctx context.Context, base string, img image) (time.Duration, error) {
	start := time.Now()
	r, body, err := c.manifest(ctx, base, img.Repo, img.Tag)
	if err != nil {
		return 0, err
	}
	if r != img.Digest {
		return 0, fmt.Errorf("manifest %s:%s from %s has digest %s, want %s", img.Repo, img.Tag, base, r, img.Digest)
	}
	var m struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return 0, fmt.Errorf("decode manifest from %s: %w", base, err)
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, d := range append([]descriptor{m.Config}, m.Layers...) {
		g.Go(func() error {
			_, err := c.fetchBlob(gctx, base, img.Repo, blob{Digest: d.Digest, Size: d.Size})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// manifest GETs repo's manifest ref and returns the digest of its bytes.
func (c *client) manifest(ctx context.Context, base, repo, ref string) (string, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		return "", nil, err
	}
	req.Header.Set("Accept", mediaManifest)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", nil, fmt.Errorf("GET manifest %s:%s from %s: %w", repo, ref, base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return "", nil, fmt.Errorf("read manifest %s:%s from %s: %w", repo, ref, base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", nil, fmt.Errorf("GET manifest %s:%s from %s: HTTP %d: %.300s", repo, ref, base, resp.StatusCode, body)
	}
	sum := sha256.Sum256(body)
	return "sha256:" + hex.EncodeToString(sum[:]), body, nil
}

// median of xs.
func median(xs []time.Duration) time.Duration {
	return percentile(xs, 50)
}

// percentile returns the nearest-rank p-th percentile of xs (0 when
// empty). It sorts a copy: callers keep per-round values in round order
// for roundSpread, which pairs them by index.
func percentile(xs []time.Duration, p float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	i := int(float64(len(xs))*p/100+0.999999) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

// medianFloat is median for float64s; like percentile it sorts a copy.
func medianFloat(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs[(len(xs)-1)/2]
}
