package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/airlock-registry/airlock/internal/s3test"
)

// Scenario 14 runs three more airlocks as one cluster: one PostgreSQL
// database (pgtest's server, as scenario 13 starts it) for their
// metadata, one blob store, and each replica's peer listener, over which
// a replica streams a blob another is filling. The origin is their
// default upstream, named as for the first airlock, so the warm row
// pulls the same repository from both.
const (
	clusterReplicas = 3
	// clusterClients is the burst of the cold row: the 48, over
	// the replicas in turn.
	clusterClients = 48
)

// clusterConfig is a replica's configuration: the first airlock's
// without its policies, its metadata in PostgreSQL, its blobs in the
// shared store, and its peer listener. It logs at warn, as the first
// airlock does: a line per request would cost the warm row what bbolt's
// side does not pay.
const clusterConfig = `listen: %q
storage:
  path: %q
%s
admin:
  listen: %q
metadata:
  driver: postgres
  dsn: %q
cluster:
  listen: %q
  advertise: %q
%s
cache:
  tagTTL: 10m
log:
  level: warn
upstreams:
  - name: origin
    url: %q
    default: true
`

// replica is one airlock of the cluster.
type replica struct {
	proc          *child
	url, adminURL string
}

// clusterBench is scenario 14's cluster and what it needs.
type clusterBench struct {
	*bench
	replicas []replica
	stopDB   func()
	stopS3   func()
	// store says which blob store the replicas share, for the rows.
	store string
}

// clusterScenario is scenario 14: a cold burst across three replicas,
// where every blob should leave the origin once for the whole cluster
// and the clients of the replicas that did not fetch it should get their
// first byte within 10 ms of the fetching replica's first client; and
// the warm manifest pull of scenario 2 from a replica, whose metadata is
// in PostgreSQL, beside the same pull from the first airlock, whose
// metadata is in bbolt.
func (b *bench) clusterScenario(ctx context.Context) ([]row, error) {
	cb, err := b.startCluster(ctx)
	if errors.Is(err, errNoPostgres) {
		return []row{{id: "14", scenario: "three replicas", cells: map[string]string{"airlock": err.Error()},
			goal: "1.00 GET per blob; remote first byte ≤ 10 ms after the leader's; warm p99 ≤ 1.1× bbolt", verdict: "**not run**"}}, nil
	}
	if err != nil {
		return nil, err
	}
	defer cb.close()
	burst, err := cb.coldBurst(ctx)
	if err != nil {
		return nil, err
	}
	join, err := cb.joinRemote(ctx)
	if err != nil {
		return nil, err
	}
	warm, err := cb.warmManifest(ctx)
	if err != nil {
		return nil, err
	}
	return append(burst, join, warm), nil
}

// startCluster starts PostgreSQL and the three replicas on a fresh
// database of it, all at once, as a rollout would.
func (b *bench) startCluster(ctx context.Context) (_ *clusterBench, err error) {
	cb := &clusterBench{bench: b}
	dsn, stopDB, err := postgres(ctx, b.dir)
	if err != nil {
		return nil, err
	}
	cb.stopDB = stopDB
	defer func() {
		if err != nil {
			cb.close()
		}
	}()
	dir := filepath.Join(b.dir, "cluster")
	storage, sharedFS, err := cb.blobStore(ctx, dir)
	if err != nil {
		return nil, err
	}
	g, gctx := errgroup.WithContext(ctx)
	cb.replicas = make([]replica, clusterReplicas)
	for i := range cb.replicas {
		addr, err1 := freeAddr()
		admin, err2 := freeAddr()
		peer, err3 := freeAddr()
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, err
		}
		rdir := filepath.Join(dir, fmt.Sprintf("replica-%d", i+1))
		if err := os.MkdirAll(rdir, 0o700); err != nil {
			return nil, err
		}
		cfgPath := filepath.Join(rdir, "airlock.yaml")
		cfg := fmt.Sprintf(clusterConfig, addr, filepath.Join(rdir, "data"), storage, admin, dsn, peer, "http://"+peer, sharedFS, b.origin.URL)
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		c, err := startChild(fmt.Sprintf("replica %d", i+1), filepath.Join(rdir, "airlock.log"), exec.Command(b.bin, "serve", "--config", cfgPath))
		if err != nil {
			return nil, err
		}
		cb.replicas[i] = replica{proc: c, url: "http://" + addr, adminURL: "http://" + admin}
		g.Go(func() error { return waitHTTP(gctx, c, "http://"+addr+"/readyz", 60*time.Second) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return cb, nil
}

func (cb *clusterBench) close() {
	for _, r := range cb.replicas {
		r.proc.stop()
	}
	if cb.stopS3 != nil {
		cb.stopS3()
	}
	if cb.stopDB != nil {
		cb.stopDB()
	}
}

// blobStore starts the S3 server the tests start (internal/s3test:
// versitygw on its posix backend, on loopback) and returns the storage
// lines of the replicas' configuration for a fresh bucket of it. Without
// versitygw, one directory on this machine's disk stands for the store
// that replicas on several machines would share (cluster.sharedFilesystem),
// and the rows say so.
func (cb *clusterBench) blobStore(ctx context.Context, dir string) (storage, cluster string, err error) {
	tb := &cleanupTB{fixtureTB: &fixtureTB{ctx: ctx, dir: dir}}
	cb.stopS3 = func() {
		tb.cleanup()
		if err := s3test.Stop(); err != nil {
			logf("stopping the S3 server: %v", err)
		}
	}
	params, err := s3Params(tb)
	if tb.skipped {
		logf("scenario 14: %v; the replicas share a directory instead", err)
		shared := filepath.Join(dir, "blobs")
		if err := os.MkdirAll(shared, 0o700); err != nil {
			return "", "", err
		}
		cb.store = "blobs in a shared directory"
		return fmt.Sprintf("  parameters:\n    rootdirectory: %q", shared), "  sharedFilesystem: true", nil
	}
	if err != nil {
		return "", "", err
	}
	b, err := json.Marshal(params) // JSON is YAML: one flow mapping
	if err != nil {
		return "", "", err
	}
	cb.store = "blobs in S3 (versitygw)"
	return "  driver: s3\n  parameters: " + string(b), "", nil
}

// s3Params calls s3test.Params, turning its Fatal and Skip into an error.
func s3Params(tb *cleanupTB) (params map[string]any, err error) {
	defer func() {
		if v := recover(); v != nil {
			f, ok := v.(fixtureFailure)
			if !ok {
				panic(v)
			}
			err = f
		}
	}()
	return s3test.Params(tb), nil
}

// burstGet is one blob GET of the burst, timed.
type burstGet struct {
	replica int
	digest  string
	first   time.Time // when its first body byte arrived
	ttfb    time.Duration
}

// coldBurst sends clusterClients concurrent pulls of an image nobody has
// pulled, spread over the replicas in turn, with the origin at the cold
// rate, in each round a fresh image of one layer. It counts the origin's
// GETs per blob, finds from the replicas' metrics which one fetched the
// layer (the leader), and times the first byte of every client: the
// leader's first client from its request, the clients of the other
// replicas from that client's first byte.
func (cb *clusterBench) coldBurst(ctx context.Context) ([]row, error) {
	cb.origin.rate.Store(cb.s.rateMiB * mib)
	defer cb.origin.rate.Store(0)
	var gets, blobs, fetchers int
	var leaderTTFB, localLag, remoteLag, remoteTTFB []time.Duration
	var walls []time.Duration
	for round := range cb.s.rounds {
		img, err := cb.seed.image(fmt.Sprintf("bench/cluster-%d", round), "v1", cb.s.layerMiB*mib, 1)
		if err != nil {
			return nil, err
		}
		before, err := cb.upstreamBytes(ctx)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		got, err := cb.burst(ctx, img)
		if err != nil {
			return nil, err
		}
		walls = append(walls, time.Since(start))
		cb.waitIdle(img.Blobs)
		for _, bl := range img.Blobs {
			n, _, _ := cb.origin.blobState(bl.Digest)
			gets += n
			blobs++
		}
		layer := img.Blobs[1].Digest
		after, err := cb.upstreamBytes(ctx)
		if err != nil {
			return nil, err
		}
		// The layer's leader is the replica that fetched it from the
		// origin; the others read it from the leader's peer listener.
		var leaders []int
		for i := range after {
			if after[i]-before[i] >= float64(img.Blobs[1].Size) {
				leaders = append(leaders, i)
			}
		}
		if len(leaders) == 0 {
			return nil, fmt.Errorf("round %d: no replica fetched %s from the origin", round, layer)
		}
		// More than one is a miss the GET count shows; the first is timed
		// as the leader.
		fetchers += len(leaders)
		var lead *burstGet
		for i, g := range got {
			if g.digest == layer && g.replica == leaders[0] && (lead == nil || g.first.Before(lead.first)) {
				lead = &got[i]
			}
		}
		if lead == nil {
			return nil, fmt.Errorf("round %d: no client of replica %d, the leader, fetched the layer", round, leaders[0]+1)
		}
		leaderTTFB = append(leaderTTFB, lead.ttfb)
		for i, g := range got {
			switch {
			case g.digest != layer || &got[i] == lead:
			case g.replica == leaders[0]:
				localLag = append(localLag, g.first.Sub(lead.first))
			default:
				remoteLag = append(remoteLag, g.first.Sub(lead.first))
				remoteTTFB = append(remoteTTFB, g.ttfb)
			}
		}
		if err := cb.seed.drop(img.Blobs[1]); err != nil {
			return nil, err
		}
	}
	per := float64(gets) / float64(blobs)
	lag95 := percentile(remoteLag, 95)
	return []row{{
		id: "14", scenario: fmt.Sprintf("%d concurrent cold pulls over %d replicas (metadata in PostgreSQL, %s), one %d MiB layer at %d MiB/s: upstream GETs per blob",
			clusterClients, clusterReplicas, cb.store, cb.s.layerMiB, cb.s.rateMiB),
		cells: map[string]string{"airlock": fmt.Sprintf("%.2f (%s per burst; the layer fetched by %.2f replicas per round)", per, ms(median(walls)), float64(fetchers)/float64(cb.s.rounds)),
			"direct": fmt.Sprintf("%d.00", clusterClients)},
		goal:    "exactly 1.00",
		verdict: verdict(per == 1),
	}, {
		id: "14", scenario: "the same bursts, the blob GETs sent together once every client has the manifest: first byte of the clients of the other replicas (streamed from the leader's fill), after the leader's first client's",
		cells: map[string]string{"airlock": fmt.Sprintf("p50 %s, p95 %s, max %s after it (their own TTFB p50 %s, p95 %s); the leader's first client's TTFB %s; "+
			"the leader's other clients p50 %s, p95 %s after it",
			ms(percentile(remoteLag, 50)), ms(lag95), ms(slices.Max(remoteLag)), ms(percentile(remoteTTFB, 50)), ms(percentile(remoteTTFB, 95)), ms(median(leaderTTFB)),
			ms(percentile(localLag, 50)), ms(percentile(localLag, 95)))},
		goal:    "p95 ≤ 10 ms",
		verdict: verdict(lag95 <= 10*time.Millisecond),
	}}, nil
}

// burst runs one round's pulls in the two steps of a runtime's pull:
// every client resolves the tag, all at once; once all have the
// manifest, every client fetches every blob, all at once. The second step
// starts together, so the first bytes of its GETs compare the blob path
// alone, whatever the manifests cost each replica.
func (cb *clusterBench) burst(ctx context.Context, img image) ([]burstGet, error) {
	g, gctx := errgroup.WithContext(ctx)
	for i := range clusterClients {
		r := i % clusterReplicas
		g.Go(func() error {
			d, _, err := cb.client.manifest(gctx, cb.replicas[r].url, img.Repo, img.Tag)
			if err != nil {
				return fmt.Errorf("replica %d: %w", r+1, err)
			}
			if d != img.Digest {
				return fmt.Errorf("replica %d served manifest %s for %s:%s, want %s", r+1, d, img.Repo, img.Tag, img.Digest)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var got []burstGet
	release := make(chan struct{})
	g, gctx = errgroup.WithContext(ctx)
	for i := range clusterClients {
		r := i % clusterReplicas
		for _, bl := range img.Blobs {
			g.Go(func() error {
				<-release
				start := time.Now()
				res, err := cb.client.fetchBlobCRC(gctx, cb.replicas[r].url, img.Repo, bl)
				if err != nil {
					return fmt.Errorf("replica %d: %w", r+1, err)
				}
				mu.Lock()
				got = append(got, burstGet{replica: r, digest: bl.Digest, first: start.Add(res.ttfb), ttfb: res.ttfb})
				mu.Unlock()
				return nil
			})
		}
	}
	close(release)
	return got, g.Wait()
}

// joinRemote is scenario 7 across replicas: a client of replica 2 asks
// for a blob whose slow cold transfer a client of replica 1 started a
// moment before. Replica 2 should read replica 1's growing spool over the
// peer listener and send its client the first byte at once, without a
// second upstream transfer.
func (cb *clusterBench) joinRemote(ctx context.Context) (row, error) {
	cb.origin.rate.Store(cb.slowRate())
	defer cb.origin.rate.Store(0)
	var ttfbs []time.Duration
	gets := 0
	for range cb.s.rounds {
		l, err := cb.seed.blob(2 * cb.s.layerMiB * mib)
		if err != nil {
			return row{}, err
		}
		first := make(chan error, 1)
		go func() {
			_, err := cb.client.fetchBlobCRC(ctx, cb.replicas[0].url, "bench/join-remote", l)
			first <- err
		}()
		// Join once the first transfer is visibly under way.
		if err := waitFor(time.Minute, func() bool { s, _, _ := cb.origin.blobState(l.Digest); return s > 0 }); err != nil {
			return row{}, fmt.Errorf("the origin saw no GET of %s: %w", l.Digest, err)
		}
		time.Sleep(250 * time.Millisecond)
		r, err := cb.client.fetchBlobCRC(ctx, cb.replicas[1].url, "bench/join-remote", l)
		if err := errors.Join(err, <-first); err != nil {
			return row{}, err
		}
		cb.waitIdle([]blob{l})
		n, _, _ := cb.origin.blobState(l.Digest)
		gets += n
		ttfbs = append(ttfbs, r.ttfb)
		if err := cb.seed.drop(l); err != nil {
			return row{}, err
		}
	}
	m := median(ttfbs)
	return row{
		id: "14", scenario: fmt.Sprintf("a client of replica 2 joins a slow cold transfer replica 1 started (%d MiB at %d MiB/s), as in scenario 7", 2*cb.s.layerMiB, cb.slowRate()/mib),
		cells: map[string]string{"airlock": fmt.Sprintf("TTFB %s (%s to %s over %d rounds), %.2f upstream GETs per blob",
			ms(m), ms(slices.Min(ttfbs)), ms(slices.Max(ttfbs)), len(ttfbs), float64(gets)/float64(len(ttfbs)))},
		goal:    "TTFB ≤ 10 ms, 1 upstream GET",
		verdict: verdict(m <= 10*time.Millisecond && gets == len(ttfbs)),
	}, nil
}

// upstreamBytes reads each replica's airlock_bytes_total of the origin
// with source upstream: the blob bytes it fetched from the origin itself,
// not from a peer or its store.
func (cb *clusterBench) upstreamBytes(ctx context.Context) ([]float64, error) {
	out := make([]float64, len(cb.replicas))
	for i, r := range cb.replicas {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.adminURL+"/metrics", nil)
		if err != nil {
			return nil, err
		}
		resp, err := cb.client.http.Do(req)
		if err != nil {
			return nil, fmt.Errorf("metrics of replica %d: %w", i+1, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("metrics of replica %d: %w", i+1, err)
		}
		for _, line := range strings.Split(string(body), "\n") {
			name, value, ok := strings.Cut(line, " ")
			if ok && strings.HasPrefix(name, "airlock_bytes_total{") &&
				strings.Contains(name, `source="upstream"`) && strings.Contains(name, `upstream="origin"`) {
				if out[i], err = strconv.ParseFloat(value, 64); err != nil {
					return nil, fmt.Errorf("metrics of replica %d: %s: %w", i+1, line, err)
				}
			}
		}
	}
	return out, nil
}

// warmManifest times scenario 2's pull, the warm image's manifest by tag
// from many clients at once, from replica 1 beside the first airlock,
// request by request in turn as scenario 11 does, over all rounds: a
// warm pull is answered from memory, with PostgreSQL as with bbolt.
func (cb *clusterBench) warmManifest(ctx context.Context) (row, error) {
	bbolt := manifestTarget{"bbolt", cb.airlockURL, cb.warm.Repo}
	pg := manifestTarget{"postgres", cb.replicas[0].url, cb.warm.Repo}
	for _, t := range []manifestTarget{bbolt, pg} {
		if _, _, err := cb.client.manifest(ctx, t.url, t.repo, cb.warm.Tag); err != nil {
			return row{}, fmt.Errorf("warm up %s: %w", t.name, err)
		}
	}
	before := cb.origin.snapshot().requests
	// Each process's CPU time over the whole run, per pull it served: the
	// latency tail on 2 cores follows what every request costs.
	cpuBB, err1 := cb.airlock.cpu()
	cpuPG, err2 := cb.replicas[0].proc.cpu()
	if err := errors.Join(err1, err2); err != nil {
		return row{}, err
	}
	var pp, pb []time.Duration
	all := map[string][]time.Duration{}
	for round := range cb.s.rounds {
		ts := []manifestTarget{bbolt, pg}
		if round%2 == 1 {
			ts[0], ts[1] = ts[1], ts[0]
		}
		lat, err := cb.timeManifests(ctx, cb.s.clients, cb.warm.Tag, ts)
		if err != nil {
			return row{}, err
		}
		pp = append(pp, percentile(lat[pg.name], 99))
		pb = append(pb, percentile(lat[bbolt.name], 99))
		for n, l := range lat {
			all[n] = append(all[n], l...)
		}
	}
	upstream := cb.origin.snapshot().requests - before
	afterBB, err1 := cb.airlock.cpu()
	afterPG, err2 := cb.replicas[0].proc.cpu()
	if err := errors.Join(err1, err2); err != nil {
		return row{}, err
	}
	perPull := func(d time.Duration, n int) time.Duration { return d / time.Duration(max(n, 1)) }
	p, w := percentile(all[pg.name], 99), percentile(all[bbolt.name], 99)
	return row{
		id: "14", scenario: fmt.Sprintf("warm manifest by tag, %d concurrent, from a replica with PostgreSQL metadata: p99", cb.s.clients),
		cells: map[string]string{"airlock": fmt.Sprintf("%s (%s with bbolt); server CPU per pull %s (%s with bbolt); %d upstream requests",
			ms(p), ms(w), ms(perPull(afterPG-cpuPG, len(all[pg.name]))), ms(perPull(afterBB-cpuBB, len(all[bbolt.name]))), upstream)},
		ratio:   ratio(float64(p), float64(w)) + " bbolt",
		goal:    "≤ 1.1× bbolt's",
		verdict: verdict(float64(p) <= 1.1*float64(w) && upstream == 0),
		spread:  roundSpread(durations(pp), durations(pb)),
	}, nil
}
