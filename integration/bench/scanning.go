package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quay/claircore"

	"github.com/airlock-registry/airlock/internal/pgtest"
	"github.com/airlock-registry/airlock/scanner/scannertest"
)

// Scenario 13 runs its own airlock, with the scanner on: the other
// scenarios' airlock needs no database, and their numbers stay free of
// a scanner's background work. Its one policy governs origin/bench/scan/*;
// origin/bench/plain/* is the same origin without a policy.
const (
	scanPolicyRepo = "bench/scan"
	scanPlainRepo  = "bench/plain"
	// scanPackages is how many Debian packages the scanned images hold.
	scanPackages = 100
	// scanCVE is what the images' openssl has, which the policy refuses.
	scanCVE = "CVE-2024-5535"
)

// scanningConfig is the scanning airlock's configuration.
const scanningConfig = `listen: %q
storage:
  path: %q
admin:
  listen: %q
cache:
  tagTTL: 10m
log:
  level: warn
upstreams:
  - name: origin
    url: %q
    default: true
scanner:
  database: %q
policies:
  - name: bench-vulns
    match: ["origin/` + scanPolicyRepo + `/*"]
    mode: enforce
    vulnerabilities:
      blockSeverity: high
`

// scanBench is scenario 13's airlock and what it needs.
type scanBench struct {
	*bench
	proc     *child
	url      string
	adminURL string
	stopDB   func()
	// images counts the images seeded, so each has its own base layer.
	images atomic.Int64
}

// vulnerabilityScanning is scenario 13: what scanning costs a pull. Cold,
// the time from the first pull of an image nobody has pulled, of 100
// Debian packages, to airlock's decision (the first pull is refused while
// its scan runs; the client polls until the answer is no longer "retry");
// each round's image has a base layer of its own, so every round indexes
// one. Warm, the pulls of scenario 11 of an image the vulnerability policy
// approved, beside the same image where no policy applies, while other
// images are scanned in the background: scans never slow the pull path.
func (b *bench) vulnerabilityScanning(ctx context.Context) ([]row, error) {
	sb, err := b.startScanning(ctx)
	if errors.Is(err, errNoPostgres) {
		return []row{{id: "13", scenario: "vulnerability scanning", cells: map[string]string{"airlock": err.Error()},
			goal: "decided ≤ 2 s; warm pulls ≤ 1.1× without a policy", verdict: "**not run**"}}, nil
	}
	if err != nil {
		return nil, err
	}
	defer sb.close()
	cold, err := sb.coldDecisions(ctx)
	if err != nil {
		return nil, err
	}
	warm, err := sb.warmWhileScanning(ctx)
	if err != nil {
		return nil, err
	}
	return append([]row{cold}, warm...), nil
}

// errNoPostgres is scenario 13's answer on a machine without PostgreSQL.
var errNoPostgres = errors.New("not run: PostgreSQL is not installed (apt-get install -y postgresql)")

// startScanning starts PostgreSQL (pgtest's server, in a temporary
// directory, on loopback), the scanning airlock on a database of it, and
// loads the vulnerability data with `airlock vulndb import`.
func (b *bench) startScanning(ctx context.Context) (_ *scanBench, err error) {
	sb := &scanBench{bench: b}
	dsn, stopDB, err := postgres(ctx, b.dir)
	if err != nil {
		return nil, err
	}
	sb.stopDB = stopDB
	defer func() {
		if err != nil {
			sb.close()
		}
	}()
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(b.dir, "scanning")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "airlock.yaml")
	cfg := fmt.Sprintf(scanningConfig, addr, filepath.Join(dir, "data"), admin, b.origin.URL, dsn)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	if sb.proc, err = startChild("airlock-scanning", filepath.Join(dir, "airlock.log"), exec.Command(b.bin, "serve", "--config", cfgPath)); err != nil {
		return nil, err
	}
	sb.url, sb.adminURL = "http://"+addr, "http://"+admin
	if err := waitHTTP(ctx, sb.proc, sb.url+"/readyz", 60*time.Second); err != nil {
		return nil, err
	}
	// airlock serves before its scanner has connected; the scanner's
	// metrics appear once it has.
	for deadline := time.Now().Add(2 * time.Minute); ; {
		_, _, err := sb.scanSeconds(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the scanning airlock's scanner did not start: %w; log:\n%s", err, sb.proc.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	var data string
	err = fixtures(ctx, dir, func(tb testing.TB) {
		data = scannertest.WriteExport(tb, dir, "vulns.jsonl", scannertest.Update{
			Updater: scannertest.DebianUpdater, Fingerprint: "bench-1", Vulns: []*claircore.Vulnerability{
				scannertest.DebianVuln(scanCVE, "openssl", "3.0.14-1~deb12u1", "medium", claircore.High),
				scannertest.DebianVuln("CVE-2023-4039", "gcc-12", "", "low", claircore.Medium),
				scannertest.DebianVuln("CVE-2024-6119", "openssl", "3.0.14-1~deb12u2", "medium", claircore.Medium),
			}})
	})
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, b.bin, "vulndb", "import", "--config", cfgPath, data).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("airlock vulndb import: %w\n%s", err, out)
	}
	return sb, nil
}

func (sb *scanBench) close() {
	sb.proc.stop()
	if sb.stopDB != nil {
		sb.stopDB()
	}
}

// postgres starts pgtest's server and returns a new database's DSN and
// the function that drops it and stops the server. pgtest is written for
// tests; it runs here through the fixtures' testing.TB adapter, whose
// Cleanup this keeps.
func postgres(ctx context.Context, dir string) (dsn string, stop func(), err error) {
	tb := &cleanupTB{fixtureTB: &fixtureTB{ctx: ctx, dir: dir}}
	stop = func() {
		tb.cleanup()
		if err := pgtest.Stop(); err != nil {
			logf("stopping PostgreSQL: %v", err)
		}
	}
	defer func() {
		if v := recover(); v != nil {
			f, ok := v.(fixtureFailure)
			if !ok {
				panic(v)
			}
			stop()
			err = f
			if tb.skipped {
				err = errNoPostgres
			}
		}
	}()
	return pgtest.DSN(tb), stop, nil
}

// cleanupTB is the fixture adapter with what pgtest also calls: Cleanup,
// kept until cleanup runs them, and Skip, which pgtest calls when
// PostgreSQL is not installed.
type cleanupTB struct {
	*fixtureTB
	cleanups []func()
	skipped  bool
}

func (t *cleanupTB) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }
func (t *cleanupTB) Skip(args ...any) {
	t.skipped = true
	panic(fixtureFailure{fmt.Sprint(args...)})
}

func (t *cleanupTB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	t.cleanups = nil
}

// seedScanImage seeds repo:tag as an image of one uncompressed layer: a
// Debian 12 root of scanPackages packages, whose openssl has scanCVE,
// and a file naming the image, so that its layer is new to the scanner.
func (sb *scanBench) seedScanImage(ctx context.Context, repo, tag string, pkgs []scannertest.Deb) (image, error) {
	n := sb.images.Add(1)
	var layer []byte
	err := fixtures(ctx, sb.dir, func(tb testing.TB) {
		files := scannertest.DebianFiles(pkgs...)
		files["etc/hostname"] = fmt.Sprintf("bench-scan-%d\n", n)
		layer = scannertest.Tar(tb, files)
	})
	if err != nil {
		return image{}, err
	}
	l, err := sb.seed.bytesBlob(layer)
	if err != nil {
		return image{}, err
	}
	return sb.seed.imageOf(repo, tag, []blob{l})
}

// decision GETs origin/repo's manifest ref from the scanning airlock until the
// answer is not a pending refusal (403 with Retry-After), polling every
// 20 ms, and returns the final status, the refusal's body and the time
// from the first request.
func (sb *scanBench) decision(ctx context.Context, repo, ref string, timeout time.Duration) (int, string, time.Duration, error) {
	start := time.Now()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, sb.url+"/v2/origin/"+repo+"/manifests/"+ref, nil)
		if err != nil {
			return 0, "", 0, err
		}
		req.Header.Set("Accept", mediaManifest)
		resp, err := sb.client.http.Do(req)
		if err != nil {
			return 0, "", 0, err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		pending := resp.StatusCode == http.StatusForbidden && resp.Header.Get("Retry-After") != ""
		if !pending {
			return resp.StatusCode, string(body), time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return 0, "", 0, fmt.Errorf("%s:%s still pending after %v: %s", repo, ref, timeout, body)
		}
		select {
		case <-ctx.Done():
			return 0, "", 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// coldDecisions times first pulls to their decision, one fresh image per
// round, and reads the scanner's own time per scan from airlock's
// metrics.
func (sb *scanBench) coldDecisions(ctx context.Context) (row, error) {
	rounds := sb.coldRounds()
	var took []time.Duration
	sum0, count0, err := sb.scanSeconds(ctx)
	if err != nil {
		return row{}, err
	}
	decided := true
	for round := range rounds {
		img, err := sb.seedScanImage(ctx, fmt.Sprintf("%s/cold-%d", scanPolicyRepo, round), "v1", scannertest.DebianBase(scanPackages))
		if err != nil {
			return row{}, err
		}
		status, body, d, err := sb.decision(ctx, img.Repo, img.Tag, 5*time.Minute)
		if err != nil {
			return row{}, err
		}
		if status != http.StatusForbidden || !strings.Contains(body, "policy bench-vulns: "+scanCVE+" in libssl3") {
			decided = false
			logf("scenario 13: %s:%s answered %d, not a refusal naming %s: %.300s", img.Repo, img.Tag, status, scanCVE, body)
		}
		took = append(took, d)
	}
	sum1, count1, err := sb.scanSeconds(ctx)
	if err != nil {
		return row{}, err
	}
	scans := count1 - count0
	perScan := time.Duration((sum1 - sum0) / max(scans, 1) * float64(time.Second))
	m := median(took)
	cell := fmt.Sprintf("%s (%s to %s over %d rounds); the scan itself %s (%.0f packages/s)",
		ms(m), ms(slices.Min(took)), ms(slices.Max(took)), rounds, ms(perScan), float64(scanPackages)/perScan.Seconds())
	return row{
		id: "13", scenario: fmt.Sprintf("first pull of a new image of %d Debian packages to the decision (refused for %s), scanned on first pull: wall time", scanPackages, scanCVE),
		cells:   map[string]string{"airlock": cell},
		goal:    "decided; median ≤ 2 s",
		verdict: verdict(decided && scans == float64(rounds) && m <= 2*time.Second),
	}, nil
}

// scanSecondsRe finds the scan duration histogram's sum and count.
var scanSecondsRe = regexp.MustCompile(`(?m)^airlock_scanner_scan_duration_seconds_(sum|count) ([0-9.e+-]+)$`)

// scanSeconds reads the scanning airlock's total scan time and number of
// scans done.
func (sb *scanBench) scanSeconds(ctx context.Context) (sum, count float64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sb.adminURL+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := sb.client.http.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for _, m := range scanSecondsRe.FindAllSubmatch(body, -1) {
		v, err := strconv.ParseFloat(string(m[2]), 64)
		if err != nil {
			return 0, 0, err
		}
		if string(m[1]) == "sum" {
			sum = v
		} else {
			count = v
		}
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("the scanning airlock exposes no airlock_scanner_scan_duration_seconds")
	}
	return sum, count, nil
}

// warmWhileScanning is the warm half: an image of the same packages with
// openssl fixed, approved under the policy and served as well where no
// policy applies, timed as scenario 11 times its pulls while background
// workers keep the scanner busy with new images.
func (sb *scanBench) warmWhileScanning(ctx context.Context) ([]row, error) {
	pkgs := scannertest.DebianBase(scanPackages)
	for i, p := range pkgs {
		if p.Name == "libssl3" {
			pkgs[i].Version = "3.0.14-1~deb12u2"
		}
	}
	img, err := sb.seedScanImage(ctx, scanPolicyRepo+"/warm", "v1", pkgs)
	if err != nil {
		return nil, err
	}
	sb.origin.addManifest(scanPlainRepo+"/warm", img.Tag, manifest{mediaType: mediaManifest, digest: img.Digest, body: sb.origin.manifestBytes(img.Digest)})
	if status, body, _, err := sb.decision(ctx, img.Repo, img.Tag, 5*time.Minute); err != nil || status != http.StatusOK {
		return nil, fmt.Errorf("the image with openssl fixed was not served under the policy (%v): HTTP %d %.300s", err, status, body)
	}

	// The same pulls under the policy with the scanner idle, for
	// comparison: on a shared machine a scan takes CPU time from
	// everything, whatever the pull path does.
	warm := *sb.bench
	warm.warm = img
	without := manifestTarget{"without", sb.url, "origin/" + scanPlainRepo + "/warm"}
	under := manifestTarget{"under", sb.url, "origin/" + img.Repo}
	// idle is in the order of besideWithout's rows: by tag, by digest.
	var idle []time.Duration
	for _, m := range []struct {
		clients int
		ref     string
		p       float64
	}{{sb.s.clients, img.Tag, 99}, {1, img.Digest, 50}} {
		var all []time.Duration
		for range sb.s.rounds {
			lat, err := warm.timeManifests(ctx, m.clients, m.ref, []manifestTarget{under})
			if err != nil {
				return nil, err
			}
			all = append(all, lat[under.name]...)
		}
		idle = append(idle, percentile(all, m.p))
	}

	// Two background workers, as many as the scanner's default
	// concurrency: each pulls a new image, whose first pull queues its
	// scan, and polls it to its decision, then the next.
	bg, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var scanned atomic.Int64
	var bgErr error
	var errOnce sync.Once
	for w := range 2 {
		wg.Go(func() {
			for i := 0; bg.Err() == nil; i++ {
				im, err := sb.seedScanImage(bg, fmt.Sprintf("%s/background-%d-%d", scanPolicyRepo, w, i), "v1", scannertest.DebianBase(scanPackages))
				if err == nil {
					_, _, _, err = sb.decision(bg, im.Repo, im.Tag, 5*time.Minute)
				}
				if err != nil {
					if bg.Err() == nil {
						errOnce.Do(func() { bgErr = err })
					}
					return
				}
				scanned.Add(1)
			}
		})
	}
	scans0 := scanned.Load()
	timed := time.Now()
	rows, err := warm.besideWithout(ctx, "13", "a vulnerability policy, while images are scanned", without, under, 3*sb.s.rounds, 1.1)
	scans, during := scanned.Load()-scans0, time.Since(timed)
	stop()
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if bgErr != nil {
		return nil, fmt.Errorf("background scans: %w", bgErr)
	}
	for i := range rows {
		rows[i].cells["airlock"] += fmt.Sprintf("; %s under the policy with the scanner idle; %d background scans finished in the %s both rows took",
			ms(idle[i]), scans, during.Round(100*time.Millisecond))
		if scans == 0 {
			rows[i].verdict = verdict(false)
		}
	}
	return rows, nil
}
