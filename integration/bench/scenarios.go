package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// warmBlob is scenario 1: the large blob, already cached, pulled by one
// client and by many, against the bare ServeContent ceiling, by clients
// reading 32 KiB and 1 MiB at a time.
func (b *bench) warmBlob(ctx context.Context) ([]row, error) {
	layer := b.warm.Blobs[1]
	for _, c := range b.withBefore(b.proxies()) {
		if _, err := b.client.fetchBlob(ctx, c.url, b.warm.Repo, layer); err != nil {
			return nil, fmt.Errorf("warm up %s: %w", c.name, err)
		}
		b.origin.waitBlobIdle(layer.Digest, time.Minute)
	}
	contenders := append(b.proxies(), contender{"ceiling", b.ceilingURL + "/blob", b.ceiling})
	contenders = b.withBefore(contenders)
	url := func(c contender) string {
		if c.name == "ceiling" {
			return c.url
		}
		return c.url + "/v2/" + b.warm.Repo + "/blobs/" + layer.Digest
	}
	if _, err := b.client.fetch(ctx, url(contenders[2]), noCheck); err != nil { // the ceiling
		return nil, fmt.Errorf("warm up the ceiling: %w", err)
	}
	var rows []row
	for _, rd := range b.readers {
		for _, n := range []int{1, b.s.clients} {
			r, err := b.warmRounds(ctx, rd, n, layer, contenders, url)
			if err != nil {
				return nil, err
			}
			rows = append(rows, r...)
		}
	}
	return rows, nil
}

// warmRounds times n clients of rd pulling the warm layer from each
// contender, the contenders in turn and their order rotating by round,
// and returns the throughput and CPU rows.
func (b *bench) warmRounds(ctx context.Context, rd *client, n int, layer blob, contenders []contender, url func(contender) string) ([]row, error) {
	speed := map[string][]float64{}
	cpu := map[string]time.Duration{}
	moved := map[string]int64{}
	for round := range b.s.rounds {
		for i := range contenders {
			c := contenders[(i+round)%len(contenders)]
			var cpu0 time.Duration
			if c.proc != nil {
				cpu0, _ = c.proc.cpu()
			}
			start := time.Now()
			var total int64
			var mu sync.Mutex
			g, gctx := errgroup.WithContext(ctx)
			// One client pulls repeatedly, so that each round moves at
			// least 1 GiB and the CPU clock's 10 ms ticks stay small
			// beside what is measured.
			repeat := 1
			if n == 1 {
				repeat = int(max(1, (1<<30)/layer.Size))
			}
			for range n {
				g.Go(func() error {
					for range repeat {
						r, err := rd.fetch(gctx, url(c), noCheck)
						mu.Lock()
						total += r.bytes
						mu.Unlock()
						if err != nil {
							return err
						}
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				return nil, fmt.Errorf("%s: %w", c.name, err)
			}
			if total != int64(n*repeat)*layer.Size {
				return nil, fmt.Errorf("%s sent %d bytes in %d pulls, want %d each", c.name, total, n*repeat, layer.Size)
			}
			el := time.Since(start)
			speed[c.name] = append(speed[c.name], float64(total)/mib/el.Seconds())
			if c.proc != nil {
				cpu1, err := c.proc.cpu()
				if err != nil {
					return nil, err
				}
				cpu[c.name] += cpu1 - cpu0
				moved[c.name] += total
			}
		}
	}
	a, d, ceil := medianFloat(speed["airlock"]), medianFloat(speed["distribution"]), medianFloat(speed["ceiling"])
	what := fmt.Sprintf("warm blob %d MiB, %d client", b.s.blobMiB, n)
	if n > 1 {
		what += "s"
	}
	what += ", " + readLabel(rd.readSize)
	perGiB := func(name string) time.Duration {
		return time.Duration(float64(cpu[name]) / (float64(moved[name]) / (1 << 30)))
	}
	ca, cc := perGiB("airlock"), perGiB("ceiling")
	speedCells := map[string]string{"airlock": mibps(a), "distribution": mibps(d), "ceiling": mibps(ceil)}
	cpuCells := map[string]string{"airlock": ms(ca), "distribution": "in-process, not measured", "ceiling": ms(cc)}
	if v := speed[beforeColumn]; v != nil {
		speedCells[beforeColumn] = mibps(medianFloat(v))
		cpuCells[beforeColumn] = ms(perGiB(beforeColumn))
	}
	return []row{{
		id: "1", scenario: what + ": throughput",
		cells:   speedCells,
		ratio:   fmt.Sprintf("%.2f× ceiling, %.2f× distribution", a/ceil, a/d),
		goal:    "≥ 0.95× ceiling, ≥ distribution",
		verdict: verdict(a >= 0.95*ceil && a >= d),
		spread:  roundSpread(speed["airlock"], speed["ceiling"]),
	}, {
		id: "1", scenario: what + ": server CPU per GiB",
		cells:   cpuCells,
		ratio:   ratio(float64(ca), float64(cc)) + " ceiling",
		goal:    "≤ 1.1× ceiling",
		verdict: verdict(float64(ca) <= 1.1*float64(cc)),
	}}, nil
}

// readLabel names a client's read size for a row: "32 KiB reads".
func readLabel(n int) string {
	if n >= mib && n%mib == 0 {
		return fmt.Sprintf("%d MiB reads", n/mib)
	}
	return fmt.Sprintf("%d KiB reads", n>>10)
}

// warmTag is scenario 2: many clients resolving a tag the proxy already
// holds within its TTL.
func (b *bench) warmTag(ctx context.Context) ([]row, error) {
	return b.manifestRounds(ctx, 2, b.s.clients, b.warm.Tag, b.proxies())
}

// warmDigest is scenario 3: one client fetching a cached manifest by
// digest. The ceiling process answers manifests from memory, so it is the
// in-memory registry the goal compares with; like airlock it is a process
// of its own, so both pay the same for crossing processes.
func (b *bench) warmDigest(ctx context.Context) ([]row, error) {
	return b.manifestRounds(ctx, 3, 1, b.warm.Digest, append(b.withDirect(), contender{"ceiling", b.ceilingURL, b.ceiling}))
}

func (b *bench) manifestRounds(ctx context.Context, id, clients int, ref string, cs []contender) ([]row, error) {
	for _, c := range cs {
		if _, _, err := b.client.manifest(ctx, c.url, b.warm.Repo, ref); err != nil {
			return nil, fmt.Errorf("warm up %s: %w", c.name, err)
		}
	}
	p50 := map[string][]time.Duration{}
	p99 := map[string][]time.Duration{}
	upstream := map[string]int{}
	pulls := 0
	for range b.s.rounds {
		for _, c := range cs {
			before := b.origin.snapshot().requests
			lat, err := b.timeManifests(ctx, clients, ref, []manifestTarget{{c.name, c.url, b.warm.Repo}})
			if err != nil {
				return nil, err
			}
			all := lat[c.name]
			upstream[c.name] += b.origin.snapshot().requests - before
			p50[c.name] = append(p50[c.name], percentile(all, 50))
			p99[c.name] = append(p99[c.name], percentile(all, 99))
		}
		pulls += clients * b.s.manifestN
	}
	if id == 2 {
		a, d := median(p99["airlock"]), median(p99["distribution"])
		per := func(n string) string { return fmt.Sprintf("%.2f", float64(upstream[n])/float64(pulls)) }
		return []row{{
			id: "2", scenario: fmt.Sprintf("warm manifest by tag, %d concurrent: p99", clients),
			cells:   map[string]string{"airlock": ms(a), "distribution": ms(d)},
			ratio:   ratio(float64(a), float64(d)) + " distribution",
			goal:    "≤ distribution's",
			verdict: verdict(a <= d),
		}, {
			id: "2", scenario: fmt.Sprintf("warm manifest by tag, %d concurrent: upstream requests per pull", clients),
			cells:   map[string]string{"airlock": per("airlock"), "distribution": per("distribution")},
			ratio:   "",
			goal:    "0",
			verdict: verdict(upstream["airlock"] == 0),
		}}, nil
	}
	a, d, x, m := median(p50["airlock"]), median(p50["distribution"]), median(p50["direct"]), median(p50["ceiling"])
	return []row{{
		id: "3", scenario: "warm manifest by digest, 1 client: p50",
		cells:   map[string]string{"airlock": ms(a), "distribution": ms(d), "direct": ms(x), "ceiling": ms(m) + " (in-memory)"},
		ratio:   ratio(float64(a), float64(m)) + " in-memory",
		goal:    "≤ 2× in-memory registry",
		verdict: verdict(a <= 2*m),
		spread:  roundSpread(durations(p50["airlock"]), durations(p50["ceiling"])),
	}}, nil
}

// manifestTarget is a repository on a server whose warm manifest a client
// times.
type manifestTarget struct{ name, url, repo string }

// timeManifests starts clients concurrent clients, each of which GETs the
// warm image's manifest ref manifestN times from every target, taking the
// targets in turn, client i starting with target i: with several targets
// each request of one meets the same load, at the same moment, as the
// requests of the others. It returns the latencies by target name.
func (b *bench) timeManifests(ctx context.Context, clients int, ref string, ts []manifestTarget) (map[string][]time.Duration, error) {
	lat := make([][][]time.Duration, clients) // client, target
	g, gctx := errgroup.WithContext(ctx)
	for i := range clients {
		lat[i] = make([][]time.Duration, len(ts))
		g.Go(func() error {
			for j := range b.s.manifestN * len(ts) {
				k := (i + j) % len(ts)
				t := ts[k]
				start := time.Now()
				d, _, err := b.client.manifest(gctx, t.url, t.repo, ref)
				el := time.Since(start)
				if err != nil {
					return fmt.Errorf("%s: %w", t.name, err)
				}
				if d != b.warm.Digest {
					return fmt.Errorf("%s served manifest %s for %s, want %s", t.name, d, ref, b.warm.Digest)
				}
				lat[i][k] = append(lat[i][k], el)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := map[string][]time.Duration{}
	for _, l := range lat {
		for k, t := range ts {
			out[t.name] = append(out[t.name], l[k]...)
		}
	}
	return out, nil
}

// warmUnderPolicy is scenario 11: the pulls of scenarios 2 and 3 through
// an upstream a pin policy governs, beside the same pulls through one no
// policy matches. One airlock serves both from the same origin, so the
// policy is the only difference: its warm decision is the gate's map
// lookup of the image's state, which the unpolicied pull makes too, so
// the goal is a cost lost in the noise. The two are timed in the same
// rounds, request by request in turn (see timeManifests): on a shared
// 2-core machine separate rounds move by more than the goal allows.
func (b *bench) warmUnderPolicy(ctx context.Context) ([]row, error) {
	if err := b.policyInForce(ctx); err != nil {
		return nil, err
	}
	without := manifestTarget{"without", b.airlockURL, "origin/" + b.warm.Repo}
	under := manifestTarget{"under", b.airlockURL, pinnedUpstream + "/" + b.warm.Repo}
	return b.besideWithout(ctx, "11", "a policy", without, under, b.s.rounds, 1.1)
}

// besideWithout times the warm image's manifest through under, which a
// policy (named by what) governs, beside the same manifest through
// without, which no policy matches: by tag with many clients (p99) and
// by digest with one (p50), the two timed together in the same rounds.
// The goal is a ratio of at most limit.
func (b *bench) besideWithout(ctx context.Context, id, what string, without, under manifestTarget, rounds int, limit float64) ([]row, error) {
	var rows []row
	for _, m := range []struct {
		clients int
		ref     string
		p       float64
		what    string
	}{
		{b.s.clients, b.warm.Tag, 99, fmt.Sprintf("warm manifest by tag under %s, %d concurrent: p99", what, b.s.clients)},
		{1, b.warm.Digest, 50, fmt.Sprintf("warm manifest by digest under %s, 1 client: p50", what)},
	} {
		for _, t := range []manifestTarget{without, under} {
			if _, _, err := b.client.manifest(ctx, t.url, t.repo, m.ref); err != nil {
				return nil, fmt.Errorf("warm up %s a policy: %w", t.name, err)
			}
		}
		// pu and pw are the percentiles of each round, for the spread;
		// all are the latencies of every round.
		var pu, pw []time.Duration
		all := map[string][]time.Duration{}
		for round := range rounds {
			// Which goes first alternates by round, for the single client.
			ts := []manifestTarget{without, under}
			if round%2 == 1 {
				ts[0], ts[1] = ts[1], ts[0]
			}
			lat, err := b.timeManifests(ctx, m.clients, m.ref, ts)
			if err != nil {
				return nil, err
			}
			pu = append(pu, percentile(lat[under.name], m.p))
			pw = append(pw, percentile(lat[without.name], m.p))
			for n, l := range lat {
				all[n] = append(all[n], l...)
			}
		}
		// The two sides were timed together, so the percentile of all
		// their requests compares them. With the defaults a round's p99
		// rests on its 16 slowest requests of 1600: in three runs on a
		// 2-core machine the median of the rounds' p99 ratios ranged
		// 0.97–1.21×, the pooled p99's ratio 0.97–1.00×.
		u, w := percentile(all[under.name], m.p), percentile(all[without.name], m.p)
		rows = append(rows, row{
			id: id, scenario: m.what,
			cells:   map[string]string{"airlock": fmt.Sprintf("%s (%s without a policy)", ms(u), ms(w))},
			ratio:   ratio(float64(u), float64(w)) + " without a policy",
			goal:    fmt.Sprintf("≤ %.3g× without a policy", limit),
			verdict: verdict(float64(u) <= limit*float64(w)),
			spread:  roundSpread(durations(pu), durations(pw)),
		})
	}
	return rows, nil
}

// policyInForce checks that scenario 11 measures what it says: through
// the pinned upstream an image that is not pinned is refused, and the
// same image through the default upstream is served.
func (b *bench) policyInForce(ctx context.Context) error {
	img, err := b.seed.image("bench/unpinned", "v1", 1024, 1)
	if err != nil {
		return err
	}
	if _, _, err := b.client.manifest(ctx, b.airlockURL, "origin/"+img.Repo, img.Tag); err != nil {
		return fmt.Errorf("an image no policy covers was not served: %w", err)
	}
	if _, err := b.denied(ctx, pinnedUpstream+"/"+img.Repo, img.Tag); err != nil {
		return fmt.Errorf("the pin policy is not in force: an unpinned image through upstream %q %w", pinnedUpstream, err)
	}
	return nil
}

// denied GETs repo's manifest ref from airlock and returns the message
// of the 403 DENIED it expects, or an error saying what came instead.
func (b *bench) denied(ctx context.Context, repo, ref string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.airlockURL+"/v2/"+repo+"/manifests/"+ref, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", mediaManifest)
	resp, err := b.client.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var oe struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if resp.StatusCode != http.StatusForbidden || json.Unmarshal(body, &oe) != nil || len(oe.Errors) == 0 || oe.Errors[0].Code != "DENIED" {
		return "", fmt.Errorf("got HTTP %d, not 403 DENIED: %.300s", resp.StatusCode, body)
	}
	return oe.Errors[0].Message, nil
}

// coldImage is scenario 4: a whole image nobody has pulled, through each
// contender, with the origin throttled like a distant registry and with
// it as fast as loopback allows.
func (b *bench) coldImage(ctx context.Context) ([]row, error) {
	var rows []row
	for _, rate := range []int64{b.s.rateMiB, 0} {
		r, err := b.coldImageAt(ctx, rate)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// coldImageAt is scenario 4 with the origin at rate MiB/s per response,
// 0 for unthrottled.
func (b *bench) coldImageAt(ctx context.Context, rate int64) (row, error) {
	b.origin.rate.Store(rate * mib)
	defer b.origin.rate.Store(0)
	wall := map[string][]time.Duration{}
	for round := range b.s.rounds {
		img, err := b.seed.image(fmt.Sprintf("bench/cold-%d-%d", rate, round), "v1", b.s.layerMiB*mib, b.s.layers)
		if err != nil {
			return row{}, err
		}
		for _, c := range b.withBefore(b.withDirect()) {
			d, err := b.client.pull(ctx, c.url, img)
			if err != nil {
				return row{}, err
			}
			wall[c.name] = append(wall[c.name], d)
			b.waitIdle(img.Blobs)
		}
	}
	origin, limit, goal := fmt.Sprintf("origin %d MiB/s per stream", rate), 1.05, "≤ 1.05× direct"
	if rate == 0 {
		origin, limit, goal = "origin unthrottled", 1.5, "≤ 1.5× direct"
	}
	a, d, x := median(wall["airlock"]), median(wall["distribution"]), median(wall["direct"])
	cells := map[string]string{"airlock": ms(a), "distribution": ms(d), "direct": ms(x)}
	if v := wall[beforeColumn]; v != nil {
		cells[beforeColumn] = ms(median(v))
	}
	return row{
		id: "4", scenario: fmt.Sprintf("cold pull of a whole image (%d × %d MiB layers, %s): wall time", b.s.layers, b.s.layerMiB, origin),
		cells:   cells,
		ratio:   ratio(float64(a), float64(x)) + " direct",
		goal:    goal,
		verdict: verdict(float64(a) <= limit*float64(x)),
		spread:  roundSpread(durations(wall["airlock"]), durations(wall["direct"])),
	}, nil
}

// coldLayer is scenario 5: a large layer nobody has pulled, from an
// origin as fast as loopback allows and from one throttled like a distant
// registry, by clients reading 32 KiB and 1 MiB at a time: the first byte,
// the whole transfer, and airlock's CPU time per GiB it fetched. A proxy
// that stores before serving shows the whole transfer in its first byte;
// one that serves as it stores shows its own cost in the whole transfer
// when the origin is fast, and should match the origin when it is slow.
func (b *bench) coldLayer(ctx context.Context) ([]row, error) {
	var rows []row
	for _, rate := range []int64{0, b.s.rateMiB} {
		b.origin.rate.Store(rate * mib)
		for _, rd := range b.readers {
			r, err := b.coldLayerRounds(ctx, rd, rate)
			if err != nil {
				b.origin.rate.Store(0)
				return nil, err
			}
			rows = append(rows, r...)
		}
	}
	b.origin.rate.Store(0)
	return rows, nil
}

// coldLayerRounds pulls a fresh cold layer through each contender per round,
// the order of the contenders rotating by round, and returns the rows of
// one origin rate (MiB/s, 0 for unthrottled) and read size.
func (b *bench) coldLayerRounds(ctx context.Context, rd *client, rate int64) ([]row, error) {
	ttfb, total := map[string][]time.Duration{}, map[string][]time.Duration{}
	cpu := map[string]time.Duration{}
	fetched := map[string]int64{}
	for round := range b.s.rounds {
		l, err := b.seed.blob(b.s.coldMiB * mib)
		if err != nil {
			return nil, err
		}
		cs := b.withBefore(b.withDirect())
		for i := range cs {
			c := cs[(i+round)%len(cs)]
			var cpu0 time.Duration
			if c.proc != nil {
				cpu0, _ = c.proc.cpu()
			}
			r, err := rd.fetchBlobCRC(ctx, c.url, "bench/cold", l)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c.name, err)
			}
			// The proxies' fills end after their clients' transfers; the
			// next contender starts once the origin sent the last byte and
			// airlock committed what it fetched, so that neither the
			// commit's disk writes nor its CPU time land on the next.
			b.waitIdle([]blob{l})
			if c.proc != nil {
				if err := waitFor(time.Minute, func() bool { return c.proc.stored(l.Digest) }); err != nil {
					return nil, fmt.Errorf("%s did not store blob %s: %w", c.name, l.Digest, err)
				}
				cpu1, err := c.proc.cpu()
				if err != nil {
					return nil, err
				}
				cpu[c.name] += cpu1 - cpu0
				fetched[c.name] += l.Size
			}
			ttfb[c.name] = append(ttfb[c.name], r.ttfb)
			total[c.name] = append(total[c.name], r.total)
		}
		if err := b.seed.drop(l); err != nil {
			return nil, err
		}
	}
	origin := "origin unthrottled"
	limit, goal := 1.5, "≤ 1.5× direct"
	if rate > 0 {
		origin = fmt.Sprintf("origin %d MiB/s", rate)
		limit, goal = 1.05, "≤ 1.05× direct"
	}
	what := fmt.Sprintf("cold %d MiB layer, %s, %s", b.s.coldMiB, origin, readLabel(rd.readSize))
	a, d, x := median(ttfb["airlock"]), median(ttfb["distribution"]), median(ttfb["direct"])
	ta, td, tx := median(total["airlock"]), median(total["distribution"]), median(total["direct"])
	perGiB := func(name string) float64 {
		return cpu[name].Seconds() / (float64(fetched[name]) / (1 << 30))
	}
	ttfbCells := map[string]string{"airlock": ms(a), "distribution": ms(d), "direct": ms(x)}
	totalCells := map[string]string{"airlock": fmt.Sprintf("%s (%.2f s CPU/GiB)", ms(ta), perGiB("airlock")), "distribution": ms(td), "direct": ms(tx)}
	if v := ttfb[beforeColumn]; v != nil {
		ttfbCells[beforeColumn] = ms(median(v))
		totalCells[beforeColumn] = fmt.Sprintf("%s (%.2f s CPU/GiB)", ms(median(total[beforeColumn])), perGiB(beforeColumn))
	}
	return []row{{
		id: "5", scenario: what + ": time to first byte",
		cells:   ttfbCells,
		ratio:   fmt.Sprintf("%+.1f ms vs direct", float64(a-x)/float64(time.Millisecond)),
		goal:    "≤ direct + 5 ms",
		verdict: verdict(a <= x+5*time.Millisecond),
		spread:  differenceSpread(ttfb["airlock"], ttfb["direct"]),
	}, {
		id: "5", scenario: what + ": whole transfer (CPU per GiB fetched and stored)",
		cells:   totalCells,
		ratio:   ratio(float64(ta), float64(tx)) + " direct",
		goal:    goal,
		verdict: verdict(float64(ta) <= limit*float64(tx)),
		spread:  roundSpread(durations(total["airlock"]), durations(total["direct"])),
	}}, nil
}

// concurrentCold is scenario 6: many clients pulling one image nobody has
// pulled, at once; every blob should leave the origin once.
func (b *bench) concurrentCold(ctx context.Context) ([]row, error) {
	b.origin.rate.Store(b.s.rateMiB * mib)
	defer b.origin.rate.Store(0)
	var rows []row
	for _, n := range []int{16, 64} {
		img, err := b.seed.image(fmt.Sprintf("bench/crowd-%d", n), "v1", b.s.layerMiB*mib, 2)
		if err != nil {
			return nil, err
		}
		per := map[string]float64{}
		wall := map[string]time.Duration{}
		for _, c := range b.proxies() {
			before := b.origin.snapshot()
			start := time.Now()
			g, gctx := errgroup.WithContext(ctx)
			for range n {
				g.Go(func() error {
					_, err := b.client.pull(gctx, c.url, img)
					return err
				})
			}
			if err := g.Wait(); err != nil {
				return nil, fmt.Errorf("%s: %w", c.name, err)
			}
			wall[c.name] = time.Since(start)
			b.waitIdle(img.Blobs)
			after := b.origin.snapshot()
			gets := 0
			for _, bl := range img.Blobs {
				gets += after.blobGETs[bl.Digest] - before.blobGETs[bl.Digest]
			}
			per[c.name] = float64(gets) / float64(len(img.Blobs))
		}
		rows = append(rows, row{
			id: "6", scenario: fmt.Sprintf("%d concurrent cold pulls of one image (2 × %d MiB layers): upstream GETs per blob", n, b.s.layerMiB),
			cells: map[string]string{
				"airlock":      fmt.Sprintf("%.2f (%s)", per["airlock"], ms(wall["airlock"])),
				"distribution": fmt.Sprintf("%.2f (%s)", per["distribution"], ms(wall["distribution"])),
				"direct":       fmt.Sprintf("%d.00", n),
			},
			goal:    "exactly 1.00",
			verdict: verdict(per["airlock"] == 1),
		})
	}
	return rows, nil
}

// slowRate is the origin bandwidth of scenarios 7 and 8: slow enough that
// a second client arrives while the first transfer is under way.
func (b *bench) slowRate() int64 { return max(1, b.s.rateMiB/4) * mib }

// slowBlob seeds a fresh cold blob for scenarios 7 and 8 and throttles the
// origin to slowRate until restore is called.
func (b *bench) slowBlob() (l blob, restore func(), err error) {
	l, err = b.seed.blob(2 * b.s.layerMiB * mib)
	if err != nil {
		return blob{}, nil, err
	}
	b.origin.rate.Store(b.slowRate())
	return l, func() { b.origin.rate.Store(0) }, nil
}

// joinSlow is scenario 7: a client asking for a blob whose cold transfer
// another client started; it should be served from the bytes already
// arriving, at once, without a second upstream transfer.
func (b *bench) joinSlow(ctx context.Context) ([]row, error) {
	l, restore, err := b.slowBlob()
	if err != nil {
		return nil, err
	}
	defer restore()
	cells := map[string]string{}
	ok := true
	for _, c := range b.proxies() {
		started, _, _ := b.origin.blobState(l.Digest)
		first := make(chan error, 1)
		go func() {
			_, err := b.client.fetchBlob(ctx, c.url, "bench/join", l)
			first <- err
		}()
		// Join once the first transfer is visibly under way.
		for s, _, _ := b.origin.blobState(l.Digest); s == started; s, _, _ = b.origin.blobState(l.Digest) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(250 * time.Millisecond)
		r, err := b.client.fetchBlob(ctx, c.url, "bench/join", l)
		if err := errors.Join(err, <-first); err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		b.waitIdle([]blob{l})
		after, _, _ := b.origin.blobState(l.Digest)
		gets := after - started
		cells[c.name] = fmt.Sprintf("TTFB %s, %d upstream GET", ms(r.ttfb), gets)
		if gets != 1 {
			cells[c.name] += "s"
		}
		if c.name == "airlock" {
			ok = r.ttfb <= 10*time.Millisecond && gets == 1
		}
	}
	return []row{{
		id: "7", scenario: fmt.Sprintf("a client joins a slow cold transfer (%d MiB at %d MiB/s)", 2*b.s.layerMiB, b.slowRate()/mib),
		cells: cells, goal: "TTFB ≤ 10 ms, 1 upstream GET", verdict: verdict(ok),
	}}, nil
}

// hangUp is scenario 8: the only client of a cold transfer goes away
// early; the fill should still complete, once, and the next request be a
// cache hit.
func (b *bench) hangUp(ctx context.Context) ([]row, error) {
	l, restore, err := b.slowBlob()
	if err != nil {
		return nil, err
	}
	defer restore()
	cells := map[string]string{}
	ok := true
	for _, c := range b.proxies() {
		started, _, full0 := b.origin.blobState(l.Digest)
		if err := b.readPart(ctx, c.url+"/v2/bench/hangup/blobs/"+l.Digest, mib); err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		b.waitIdle([]blob{l})
		time.Sleep(200 * time.Millisecond) // let the proxy commit what it received
		mid, _, full := b.origin.blobState(l.Digest)
		r, err := b.client.fetchBlob(ctx, c.url, "bench/hangup", l)
		if err != nil {
			return nil, fmt.Errorf("%s, request after the hang-up: %w", c.name, err)
		}
		b.waitIdle([]blob{l})
		after, _, _ := b.origin.blobState(l.Digest)
		completed := full - full0
		hit := after == mid
		next := "next request a hit"
		if !hit {
			next = fmt.Sprintf("next request went upstream again (%d GETs)", after-mid)
		}
		cells[c.name] = fmt.Sprintf("%d of %d upstream GETs completed; %s (%s)", completed, mid-started, next, ms(r.total))
		if c.name == "airlock" {
			ok = completed == 1 && mid-started == 1 && hit
		}
	}
	return []row{{
		id: "8", scenario: fmt.Sprintf("the first client hangs up after 1 MiB of a cold %d MiB blob", 2*b.s.layerMiB),
		cells: cells, goal: "fill completes once; next request is a hit", verdict: verdict(ok),
	}}, nil
}

// readPart reads n bytes of url's body and hangs up.
func (b *bench) readPart(ctx context.Context, url string, n int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := b.client.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	_, err = io.CopyN(io.Discard, resp.Body, n)
	return err
}

// slowClients is scenario 9: many clients reading large cold blobs far
// slower than the origin sends them. A proxy that buffers what clients
// have not read yet grows with the blob; one that spools to disk stays
// flat.
func (b *bench) slowClients(ctx context.Context) ([]row, error) {
	var ls []blob
	for range 2 {
		l, err := b.seed.blob(b.s.blobMiB * mib)
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	base, err := b.airlock.rss()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.s.slowSecond)
	defer cancel()
	var wg sync.WaitGroup
	var readMu sync.Mutex
	var read int64
	const clients = 64
	for i := range clients {
		wg.Go(func() {
			n := b.slowRead(ctx, b.airlockURL+"/v2/bench/slow/blobs/"+ls[i%2].Digest)
			readMu.Lock()
			read += n
			readMu.Unlock()
		})
	}
	peak := base
	tick := time.NewTicker(50 * time.Millisecond)
	for ctx.Err() == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
		if r, err := b.airlock.rss(); err == nil {
			peak = max(peak, r)
		}
	}
	tick.Stop()
	wg.Wait()
	b.waitIdle(ls)
	return []row{{
		id: "9", scenario: fmt.Sprintf("%d slow clients on 2 cold %d MiB layers (%.0f MiB read in %v): peak RSS", clients, b.s.blobMiB, float64(read)/mib, b.s.slowSecond),
		cells: map[string]string{
			"airlock":      fmt.Sprintf("%.0f MiB (%.0f MiB before)", float64(peak)/mib, float64(base)/mib),
			"distribution": "in-process, not measured",
		},
		goal:    "≤ 200 MiB",
		verdict: verdict(peak <= 200*mib),
	}}, nil
}

// slowRead reads url at about 2 MiB/s until ctx ends and returns the
// bytes read.
func (b *bench) slowRead(ctx context.Context, url string) int64 {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	resp, err := b.client.http.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	buf := make([]byte, 32<<10)
	var n int64
	for ctx.Err() == nil {
		m, err := io.ReadFull(resp.Body, buf)
		n += int64(m)
		if err != nil {
			return n
		}
		select {
		case <-ctx.Done():
		case <-time.After(16 * time.Millisecond):
		}
	}
	return n
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("still waiting after %v", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// waitIdle waits for the origin's transfers of blobs to end, so that one
// measurement does not pay for the background fills of the previous one.
func (b *bench) waitIdle(blobs []blob) {
	for _, bl := range blobs {
		b.origin.waitBlobIdle(bl.Digest, 2*time.Minute)
	}
}

// sharedBase is scenario 10: a repository nobody has pulled whose image
// shares its base layers with an image already cached through another
// repository. A proxy must not serve one repository's cached blobs through
// another on the strength of a manifest alone: airlock asks the upstream
// with one HEAD per shared layer, once, instead of transferring it again.
// The pulls are timed with the origin throttled like a distant registry,
// and as fast as loopback allows.
func (b *bench) sharedBase(ctx context.Context) ([]row, error) {
	var rows []row
	for _, rate := range []int64{b.s.rateMiB, 0} {
		r, err := b.sharedBaseAt(ctx, rate)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

// sharedBaseAt is scenario 10 with the origin at rate MiB/s per response,
// 0 for unthrottled.
func (b *bench) sharedBaseAt(ctx context.Context, rate int64) ([]row, error) {
	const shared = 3
	b.origin.rate.Store(rate * mib)
	defer b.origin.rate.Store(0)
	wall := map[string][]time.Duration{}
	heads, gets, again := map[string]int{}, map[string]int{}, map[string]int{}
	for round := range b.s.rounds {
		var base []blob
		for range shared + 2 {
			l, err := b.seed.blob(b.s.layerMiB * mib)
			if err != nil {
				return nil, err
			}
			base = append(base, l)
		}
		own1, own2 := base[shared], base[shared+1]
		base = base[:shared]
		first, err := b.seed.imageOf(fmt.Sprintf("bench/base-%d-%d", rate, round), "v1", append(slices.Clone(base), own1))
		if err != nil {
			return nil, err
		}
		next, err := b.seed.imageOf(fmt.Sprintf("bench/derived-%d-%d", rate, round), "v1", append(slices.Clone(base), own2))
		if err != nil {
			return nil, err
		}
		for _, c := range b.withDirect() {
			if _, err := b.client.pull(ctx, c.url, first); err != nil {
				return nil, err
			}
			b.waitIdle(first.Blobs)
			before := b.origin.snapshot()
			d, err := b.client.pull(ctx, c.url, next)
			if err != nil {
				return nil, err
			}
			b.waitIdle(next.Blobs)
			after := b.origin.snapshot()
			wall[c.name] = append(wall[c.name], d)
			for _, l := range base {
				heads[c.name] += after.blobHEADs[l.Digest] - before.blobHEADs[l.Digest]
				gets[c.name] += after.blobGETs[l.Digest] - before.blobGETs[l.Digest]
			}
			if _, err := b.client.pull(ctx, c.url, next); err != nil {
				return nil, err
			}
			b.waitIdle(next.Blobs)
			last := b.origin.snapshot()
			for _, l := range base {
				again[c.name] += last.blobHEADs[l.Digest] - after.blobHEADs[l.Digest] +
					last.blobGETs[l.Digest] - after.blobGETs[l.Digest]
			}
		}
	}
	per := func(name string) string {
		n := float64(shared * b.s.rounds)
		return fmt.Sprintf("%.2f HEADs, %.2f GETs per shared layer; %.2f on the next pull",
			float64(heads[name])/n, float64(gets[name])/n, float64(again[name])/n)
	}
	origin, limit, goal := fmt.Sprintf("origin %d MiB/s", rate), 1.05, "≤ 1.05× direct"
	if rate == 0 {
		origin, limit, goal = "origin unthrottled", 1.5, "≤ 1.5× direct"
	}
	a, d, x := median(wall["airlock"]), median(wall["distribution"]), median(wall["direct"])
	return []row{{
		id: "10", scenario: fmt.Sprintf("warm pull of a new repository sharing %d of %d layers (%d MiB each) with a cached image, %s: wall time", shared, shared+1, b.s.layerMiB, origin),
		cells:   map[string]string{"airlock": ms(a), "distribution": ms(d), "direct": ms(x)},
		ratio:   ratio(float64(a), float64(x)) + " direct",
		goal:    goal,
		verdict: verdict(float64(a) <= limit*float64(x)),
		spread:  roundSpread(durations(wall["airlock"]), durations(wall["direct"])),
	}, {
		id: "10", scenario: fmt.Sprintf("the same pull, %s: upstream requests for the shared layers", origin),
		cells:   map[string]string{"airlock": per("airlock"), "distribution": per("distribution"), "direct": per("direct")},
		goal:    "1 HEAD and no GET per shared layer, once",
		verdict: verdict(heads["airlock"] == shared*b.s.rounds && gets["airlock"] == 0 && again["airlock"] == 0),
	}}, nil
}
