package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// signaturePolicy is scenario 12: what verifying signatures costs. Cold,
// it is the first pull of a manifest by tag, which the gate answers only
// after verifying the image's signatures: under a key policy (cosign tag
// scheme), a keyless one (cosign v3 bundle as a referrer, checked against
// a trusted_root.json) and a Notation one, each beside the same cold pull
// of another fresh image that no policy matches. Warm, it is the pulls of
// scenarios 2 and 3 under the keyless policy beside the same pulls without
// one, as scenario 11 measures them: the decision is kept, so the goal is
// a cost lost in the noise.
func (b *bench) signaturePolicy(ctx context.Context) ([]row, error) {
	var rows []row
	for _, kind := range sigKinds {
		r, err := b.coldVerification(ctx, kind)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
		rows = append(rows, r)
	}
	warm, err := b.warmUnderSignature(ctx)
	if err != nil {
		return nil, err
	}
	return append(rows, warm...), nil
}

// sigKindNames are the policies of scenario 12 in words.
var sigKindNames = map[string]string{
	sigKey:      "a key policy (cosign, tag scheme)",
	sigKeyless:  "a keyless policy (cosign v3 bundle, referrers)",
	sigNotation: "a Notation policy (JWS, referrers)",
}

// coldRounds is how many fresh image pairs scenario 12 pulls cold per
// policy: each pull is a few milliseconds, so more rounds than the
// others cost little and steady the median.
func (b *bench) coldRounds() int { return 5 * b.s.rounds }

// coldVerification measures one policy's cold pull: per round a fresh
// signed image under the policy and a fresh image no policy matches,
// pulled by tag in turn (the order alternating by round), with the
// origin's requests of each recorded.
func (b *bench) coldVerification(ctx context.Context, kind string) (row, error) {
	msg, err := b.signatureInForce(ctx, kind)
	if err != nil {
		return row{}, err
	}
	type pull struct {
		name string
		img  image
	}
	lat := map[string][]time.Duration{}
	cpu := map[string]time.Duration{}
	reqs := map[string]map[string]int{"under": {}, "without": {}}
	rounds := b.coldRounds()
	for round := range rounds {
		signed, err := b.seed.image(fmt.Sprintf("bench/%s/cold-%d", kind, round), "v1", 4<<10, 1)
		if err != nil {
			return row{}, err
		}
		if err := b.sign(ctx, kind, signed); err != nil {
			return row{}, err
		}
		plain, err := b.seed.image(fmt.Sprintf("bench/cold-%s-%d", kind, round), "v1", 4<<10, 1)
		if err != nil {
			return row{}, err
		}
		pulls := []pull{{"under", signed}, {"without", plain}}
		if round%2 == 1 {
			pulls[0], pulls[1] = pulls[1], pulls[0]
		}
		for _, p := range pulls {
			cpu0, err := b.airlock.cpu()
			if err != nil {
				return row{}, err
			}
			b.origin.startTrace()
			start := time.Now()
			d, _, err := b.client.manifest(ctx, b.airlockURL, "origin/"+p.img.Repo, p.img.Tag)
			el := time.Since(start)
			trace := b.origin.stopTrace()
			if err != nil {
				return row{}, fmt.Errorf("cold pull %s a policy: %w", p.name, err)
			}
			if d != p.img.Digest {
				return row{}, fmt.Errorf("cold pull %s a policy: got manifest %s, want %s", p.name, d, p.img.Digest)
			}
			lat[p.name] = append(lat[p.name], el)
			for _, k := range trace {
				reqs[p.name][k]++
			}
			// Let what airlock does after answering (its metadata
			// commit) end before the next pull is timed.
			b.waitIdle(p.img.Blobs)
			time.Sleep(20 * time.Millisecond)
			cpu1, err := b.airlock.cpu()
			if err != nil {
				return row{}, err
			}
			cpu[p.name] += cpu1 - cpu0
		}
	}
	u, w := median(lat["under"]), median(lat["without"])
	extra := make([]time.Duration, rounds)
	for i := range rounds {
		extra[i] = lat["under"][i] - lat["without"][i]
	}
	// airlock's CPU time moves in 10 ms ticks: summed over the rounds it
	// resolves about 10 ms / rounds per pull, and unlike the wall time it
	// does not grow when other work on the machine takes the cores.
	per := func(d time.Duration) time.Duration { return d / time.Duration(rounds) }
	cell := fmt.Sprintf("%s (%s without a policy): %s per verification (%s to %s over %d rounds); "+
		"airlock CPU per pull %s (%s without, ±%s); upstream requests of the verification: %s",
		ms(u), ms(w), signedMs(median(extra)), signedMs(slices.Min(extra)), signedMs(slices.Max(extra)), rounds,
		ms(per(cpu["under"])), ms(per(cpu["without"])), ms(per(10*time.Millisecond)),
		requestDiff(reqs["under"], reqs["without"], rounds))
	return row{
		id: "12", scenario: "cold manifest by tag under " + sigKindNames[kind] + ", verified before it is served: wall time",
		cells:   map[string]string{"airlock": cell},
		ratio:   ratio(float64(u), float64(w)) + " without a policy",
		goal:    "signed image served, unsigned refused; cost reported",
		verdict: verdict(msg != ""),
		spread:  roundSpread(durations(lat["under"]), durations(lat["without"])),
	}, nil
}

// signatureInForce checks that kind's policy governs its repositories: a
// fresh unsigned image there is refused with 403 DENIED. It returns the
// refusal's message.
func (b *bench) signatureInForce(ctx context.Context, kind string) (string, error) {
	img, err := b.seed.image("bench/"+kind+"/unsigned", "v1", 1024, 1)
	if err != nil {
		return "", err
	}
	msg, err := b.denied(ctx, "origin/"+img.Repo, img.Tag)
	if err != nil {
		return "", fmt.Errorf("the signature policy is not in force: an unsigned image in origin/%s %w", img.Repo, err)
	}
	if !strings.Contains(msg, "bench-"+kind) {
		return "", fmt.Errorf("the refusal of an unsigned image in origin/%s does not name policy bench-%s: %q", img.Repo, kind, msg)
	}
	return msg, nil
}

// warmUnderSignature is scenario 12's warm half: the warm image's manifest
// served through a repository the keyless policy governs, signed there by
// a bundle, beside the same manifest through origin/bench/warm.
func (b *bench) warmUnderSignature(ctx context.Context) ([]row, error) {
	img := b.warm
	img.Repo = "bench/" + sigKeyless + "/warm"
	b.origin.addManifest(img.Repo, img.Tag, manifest{mediaType: mediaManifest, digest: img.Digest, body: b.origin.manifestBytes(img.Digest)})
	if err := b.sign(ctx, sigKeyless, img); err != nil {
		return nil, err
	}
	without := manifestTarget{"without", b.airlockURL, "origin/" + b.warm.Repo}
	under := manifestTarget{"under", b.airlockURL, "origin/" + img.Repo}
	// Three times the rounds of scenario 11: the goal is half as wide, and
	// more requests steady the pooled p99, which rests on the slowest 1 %.
	return b.besideWithout(ctx, "12", "a signature policy (keyless)", without, under, 3*b.s.rounds, 1.05)
}

// signedMs is ms with its sign: "+8.1 ms", "-0.3 ms".
func signedMs(d time.Duration) string {
	if d < 0 {
		return "-" + ms(-d)
	}
	return "+" + ms(d)
}

// requestDiff says which upstream requests a pull under a policy made
// beyond the pull without one, per pull: "1 GET referrers, 1 GET blob".
func requestDiff(under, without map[string]int, pulls int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(under)) {
		n := float64(under[k]-without[k]) / float64(pulls)
		if n == 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s", strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.2f", n), "0"), ".0"), k))
	}
	for _, k := range slices.Sorted(maps.Keys(without)) {
		if _, ok := under[k]; !ok {
			parts = append(parts, fmt.Sprintf("-%.2g %s", float64(without[k])/float64(pulls), k))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
