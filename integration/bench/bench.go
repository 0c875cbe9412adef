package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

const mib = 1 << 20

// bench holds the running contenders and the seeded content of one run.
type bench struct {
	s      settings
	dir    string
	bin    string // the airlock binary: scenario 13 starts one of its own
	origin *origin
	seed   *seeder
	client *client
	// readers read bodies 32 KiB and 1 MiB at a time, as Docker and
	// containerd do (scenarios 1 and 5).
	readers []*client
	// signers sign scenario 12's images; airlock trusts their keys.
	signers *signers

	airlock    *child
	airlockURL string
	// before is the -baseline airlock, nil without one.
	before     *child
	beforeURL  string
	dist       *distributionProxy
	ceiling    *child
	ceilingURL string

	warm image // one layer of blobMiB; its manifest serves scenarios 2 and 3
}

func newBench(ctx context.Context, s settings, dir, bin string) (_ *bench, err error) {
	b := &bench{s: s, dir: dir, bin: bin, client: newClient(), readers: []*client{newReader(32 << 10), newReader(1 << 20)}}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	if b.origin, err = startOrigin(); err != nil {
		return nil, err
	}
	seedDir := filepath.Join(dir, "origin")
	if err := os.MkdirAll(seedDir, 0o755); err != nil {
		return nil, err
	}
	b.seed = &seeder{dir: seedDir, origin: b.origin}
	logf("seeding a %d MiB image", s.blobMiB)
	if b.warm, err = b.seed.image("bench/warm", "v1", s.blobMiB*mib, 1); err != nil {
		return nil, err
	}
	if b.signers, err = newSigners(ctx, dir); err != nil {
		return nil, err
	}
	logf("starting airlock, distribution and the ceiling")
	// The warm image is the only one pinned, for its tag: scenario 11
	// pulls it through the policy.
	pins := []string{fmt.Sprintf("%s/%s:%s %s", pinnedUpstream, b.warm.Repo, b.warm.Tag, b.warm.Digest)}
	if b.airlock, b.airlockURL, err = startAirlock(ctx, bin, dir, b.origin, pins, b.signers); err != nil {
		return nil, err
	}
	if s.baseline != "" {
		bdir := filepath.Join(dir, "before")
		if err := os.MkdirAll(bdir, 0o755); err != nil {
			return nil, err
		}
		if b.before, b.beforeURL, err = startAirlock(ctx, s.baseline, bdir, b.origin, pins, b.signers); err != nil {
			return nil, fmt.Errorf("the baseline airlock: %w", err)
		}
	}
	if b.dist, err = startDistribution(ctx, filepath.Join(dir, "distribution"), b.origin.URL); err != nil {
		return nil, err
	}
	mf := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(mf, b.origin.manifestBytes(b.warm.Digest), 0o600); err != nil {
		return nil, err
	}
	if b.ceiling, b.ceilingURL, err = startCeiling(ctx, dir, b.warm.Blobs[1].Path, mf); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *bench) close() {
	b.airlock.stop()
	b.before.stop()
	b.ceiling.stop()
	if b.dist != nil {
		b.dist.close()
	}
	if b.origin != nil {
		b.origin.close()
	}
}

// contender is one server a scenario pulls through.
type contender struct {
	name string
	url  string
	proc *child // set when the server is a process the run can measure
}

func (b *bench) proxies() []contender {
	return []contender{{"airlock", b.airlockURL, b.airlock}, {"distribution", b.dist.URL, nil}}
}

func (b *bench) withDirect() []contender {
	return append(b.proxies(), contender{"direct", b.origin.URL, nil})
}

// withBefore adds the -baseline airlock, if there is one, to cs.
func (b *bench) withBefore(cs []contender) []contender {
	if b.before == nil {
		return cs
	}
	return append(cs, contender{beforeColumn, b.beforeURL, b.before})
}

// runAll runs every scenario in order and returns the table rows.
func (b *bench) runAll(ctx context.Context) ([]row, error) {
	var rows []row
	steps := []struct {
		name string
		fn   func(context.Context) ([]row, error)
	}{
		{"1: warm blob", b.warmBlob},
		{"2: warm manifest by tag", b.warmTag},
		{"3: warm manifest by digest", b.warmDigest},
		{"4: cold image", b.coldImage},
		{"5: cold layer, fast and slow origin", b.coldLayer},
		{"6: concurrent cold pulls", b.concurrentCold},
		{"7: joining a slow transfer", b.joinSlow},
		{"8: first client hangs up", b.hangUp},
		{"9: slow clients, memory", b.slowClients},
		{"10: new repository sharing base layers", b.sharedBase},
		{"11: warm manifest under a policy", b.warmUnderPolicy},
		{"12: signature verification, cold and warm", b.signaturePolicy},
		{"13: vulnerability scanning", b.vulnerabilityScanning},
		{"14: three replicas", b.clusterScenario},
	}
	for i, st := range steps {
		if b.s.only != "" && !slices.Contains(strings.Split(b.s.only, ","), strconv.Itoa(i+1)) {
			continue
		}
		logf("scenario %s", st.name)
		start := time.Now()
		r, err := st.fn(ctx)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: %w", st.name, err)
		}
		logf("scenario %s done in %v", st.name, time.Since(start).Round(time.Millisecond))
		rows = append(rows, r...)
	}
	return rows, nil
}
