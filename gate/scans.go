package gate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Scanner is the vulnerability scanner as the gate uses it
// (*scanner.Scanner implements it). Its results come back through
// ScanResult.
type Scanner interface {
	// Enqueue asks for a digest to be scanned and returns its scan as it
	// stands: queued, running, or done already (another repository's).
	Enqueue(ctx context.Context, j scanner.Job) (metadata.Scan, error)
	// Rescan scans a digest again from the start.
	Rescan(ctx context.Context, j scanner.Job) error
}

const (
	// actorScanner is the actor of decisions a scan result caused.
	actorScanner = "scanner"
	// enqueueTimeout bounds asking the scanner to queue a scan on a
	// pull's path: a scanner whose database is down must not hold pulls.
	enqueueTimeout = 5 * time.Second
	// requestScansEvery is how often images that wait for a scan that
	// could not be queued are queued again.
	requestScansEvery = 30 * time.Second
	// maxScanRequests bounds the scans queued again per round.
	maxScanRequests = 256
	// staleScan is how long a scan may stay queued or running before
	// requestScans asks the scanner how it stands.
	staleScan = 2 * time.Minute
)

// kindOf is what img is to the policies.
func kindOf(img *metadata.Image) policy.Kind {
	switch {
	case isIndex(img.MediaType):
		return policy.KindIndex
	case img.Index != "":
		return policy.KindPlatform
	}
	return policy.KindImage
}

func isIndex(mediaType string) bool {
	return mediaType == mediaOCIIndex || mediaType == mediaDockerList
}

// needsScan reports whether img's verdict under set depends on a scan of
// its content.
func needsScan(set *policy.Set, img *metadata.Image) bool {
	return img.Artifact == "" && kindOf(img) != policy.KindIndex && set.Scans(img.Repository)
}

// scanFor returns what is known of d's scan, asking the scanner to queue
// one when nothing is: nil when there is no scanner or it cannot be
// reached (the image then waits, and Run asks again). It must not be
// called with g.write held: the scanner reports through ScanResult, which
// takes it.
func (g *Gate) scanFor(ctx context.Context, repo string, d digest.Digest) *metadata.Scan {
	g.mu.RLock()
	cur := g.scans[d]
	g.mu.RUnlock()
	if cur != nil {
		return cur
	}
	if g.scanner == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, enqueueTimeout)
	defer cancel()
	sc, err := g.scanner.Enqueue(ctx, scanner.Job{Repository: repo, Digest: d})
	if err != nil {
		g.warnScanner(ctx, imageKey(repo, d), err)
		return nil
	}
	return &sc
}

// warnScanner logs that a scan could not be queued, at most once a minute
// at Warn: a scanner that is down would otherwise log every pull.
func (g *Gate) warnScanner(ctx context.Context, image string, err error) {
	level := slog.LevelDebug
	now := g.now()
	if last := g.scannerWarned.Load(); last == nil || now.Sub(*last) >= time.Minute {
		g.scannerWarned.Store(&now)
		level = slog.LevelWarn
	}
	msg := "queuing a vulnerability scan failed; new images under policies that check vulnerabilities are held until it succeeds, approved images are still served"
	if errors.Is(err, scanner.ErrUnavailable) {
		msg = "the scanner's database is unreachable; new images under policies that check vulnerabilities are held until it is back, approved images are still served"
	}
	g.log.LogAttrs(ctx, level, msg, slog.String("image", image), slog.String("error", err.Error()))
}

// newerScan reports whether a is a later report of a digest's scan than b.
func newerScan(a, b *metadata.Scan) bool {
	if b == nil {
		return a != nil
	}
	if a == nil {
		return false
	}
	return scanTime(a).After(scanTime(b))
}

func scanTime(s *metadata.Scan) time.Time {
	t := s.Queued
	if s.Started.After(t) {
		t = s.Started
	}
	if s.Finished.After(t) {
		t = s.Finished
	}
	return t
}

// ScanResult takes a change of d's scan (queued, running, done, failed, or
// matched again against new vulnerability data) and decides every image
// with that digest again: an approved image whose new findings break a
// policy is quarantined, its blobs withdrawn and an alert sent. It is the
// scanner's OnResult.
//
// A report older than the one the gate holds is dropped: reports come
// from several goroutines (Enqueue's answer, the workers, the re-check, a
// poll of the scanner's records) and one may overtake another; a queued
// state landing after the result would hold the image for a scan that is
// over, with nothing left to report it.
func (g *Gate) ScanResult(ctx context.Context, d digest.Digest, scan metadata.Scan) {
	g.write.Lock()
	defer g.write.Unlock()
	s := scan
	set := g.policies.Load()
	g.mu.Lock()
	if cur := g.scans[d]; cur != nil && scanTime(&s).Before(scanTime(cur)) {
		g.mu.Unlock()
		return
	}
	g.scans[d] = &s
	// A scan queued or running again (a rescan) leaves an image that a
	// finished scan decided as it is until the new result: Rescan promises
	// that, and holding an approved image meanwhile would withdraw its
	// layers for as long as the scan takes.
	again := s.State == metadata.ScanQueued || s.State == metadata.ScanRunning
	var targets []*metadata.Image
	for _, img := range g.images {
		if img.Digest == d && (img.Scan != nil || needsScan(set, img)) && img.Artifact == "" && kindOf(img) != policy.KindIndex &&
			!(again && img.Scan != nil && img.Scan.State == metadata.ScanDone) {
			targets = append(targets, img)
		}
	}
	g.mu.Unlock()
	now := g.now()
	for _, img := range targets {
		_, err := g.change(ctx, img.Repository, d, now, func(cur *metadata.Image) (metadata.Change, error) {
			was := cur.Scan
			cp := s
			cp.Findings = slices.Clone(s.Findings)
			cur.Scan = &cp
			from, reasons := cur.State, cur.Reasons
			decide(set, cur, "", now)
			c := metadata.Change{Actor: actorScanner, Action: decided(from, cur), Reason: scanSentence(&cp)}
			if c.Action == "" && cur.State == metadata.StateReleased && !sameReasons(reasons, cur.Reasons) {
				// The release holds (it is of the digest, until it ends),
				// but who released it for some findings must be able to
				// see that it now serves others.
				c.Action, c.Reason = "redecide", "findings changed while released: "+c.Reason
			}
			if s.State == metadata.ScanFailed && (was == nil || was.State != metadata.ScanFailed) {
				c.Deliveries = g.route(eventFor(config.EventScanFailed, from, cur, c, now))
			}
			return c, nil
		})
		if err != nil {
			g.log.LogAttrs(ctx, slog.LevelError, "recording a scan result failed; the image keeps its state until the next result or a rescan",
				slog.String("image", imageKey(img.Repository, d)), slog.String("scan", s.State), slog.String("error", err.Error()))
		}
	}
}

// scanSentence says what a scan found, for the audit log.
func scanSentence(s *metadata.Scan) string {
	switch s.State {
	case metadata.ScanQueued:
		return "queued for a vulnerability scan"
	case metadata.ScanRunning:
		return "vulnerability scan started"
	case metadata.ScanFailed:
		return "vulnerability scan failed: " + s.Error
	}
	if s.Note != "" {
		return "vulnerability scan: " + s.Note
	}
	return fmt.Sprintf("vulnerability scan: %d packages, %d findings", s.Packages, len(s.Findings))
}

// scanPending is the message of a pull refused while img's scan has not
// decided it, or "" when the scan is not what it waits for.
func (g *Gate) scanPending(img *metadata.Image, now time.Time) string {
	if !needsScan(g.policies.Load(), img) {
		return ""
	}
	name := imageKey(img.Repository, img.Digest)
	s := img.Scan
	switch {
	case s == nil:
		return fmt.Sprintf("%s waits for a vulnerability scan that could not be queued yet (the scanner is unavailable); retry later", name)
	case s.State == metadata.ScanQueued:
		return fmt.Sprintf("%s is queued for a vulnerability scan (for %s); retry shortly", name, since(now, s.Queued))
	case s.State == metadata.ScanRunning:
		return fmt.Sprintf("%s is being scanned for vulnerabilities (for %s); retry shortly", name, since(now, s.Started))
	case s.State == metadata.ScanFailed:
		return fmt.Sprintf("%s could not be scanned for vulnerabilities (%s). An admin can scan it again with: airlock rescan %s", name, s.Error, name)
	}
	return ""
}

func since(now, t time.Time) string {
	if t.IsZero() || now.Before(t) {
		return "a moment"
	}
	return now.Sub(t).Round(time.Second).String()
}

// kickScan asks, in the background, for the scan of an image that waits
// for one none could be queued for: its pulls are answered from memory, and
// a scanner that is back should not wait for Run's next round. One request
// per digest runs at a time.
func (g *Gate) kickScan(repo string, d digest.Digest) {
	if g.scanner == nil {
		return
	}
	g.kickMu.Lock()
	defer g.kickMu.Unlock()
	if g.stopped {
		return
	}
	if _, busy := g.kicking.LoadOrStore(d, true); busy {
		return
	}
	g.kicks.Add(1)
	go func() {
		defer g.kicks.Done()
		defer g.kicking.Delete(d)
		ctx := context.Background()
		if sc := g.scanFor(ctx, repo, d); sc != nil {
			g.ScanResult(ctx, d, *sc)
		}
	}()
}

// stopKicks waits for the scans kickScan is asking for, and starts no
// more: the store closes after Run.
func (g *Gate) stopKicks() {
	g.kickMu.Lock()
	g.stopped = true
	g.kickMu.Unlock()
	g.kicks.Wait()
}

// scanRecords is a Scanner that can read what it recorded of many digests
// at once (*scanner.Scanner can). A result reaches ScanResult only in the
// process that did the work, and only if it runs long enough to report
// it: another replica's worker or re-check, or a stop between the record
// and the report, leaves this gate with a stale scan. syncScans reads the
// records to catch up.
type scanRecords interface {
	Scans(ctx context.Context, ds []digest.Digest) (map[digest.Digest]metadata.Scan, error)
}

// syncScans asks the scanner for the recorded scans of the digests whose
// images hold a scan, and hands over each that differs from what an image
// holds: every digest still waiting for its scan, and maxScanRequests of
// the others in turn (so that a re-check another replica ran reaches this
// one within a few rounds). An image whose record of a result failed to be
// written is decided again the same way.
func (g *Gate) syncScans(ctx context.Context) {
	rec, ok := g.scanner.(scanRecords)
	if !ok {
		return
	}
	g.mu.RLock()
	held := map[digest.Digest][]metadata.Scan{}
	for _, img := range g.images {
		if img.Scan != nil {
			held[img.Digest] = append(held[img.Digest], *img.Scan)
		}
	}
	g.mu.RUnlock()
	var waiting, settled []digest.Digest
	for d, scans := range held {
		if slices.ContainsFunc(scans, func(s metadata.Scan) bool {
			return s.State == metadata.ScanQueued || s.State == metadata.ScanRunning
		}) {
			waiting = append(waiting, d)
		} else {
			settled = append(settled, d)
		}
	}
	slices.Sort(settled)
	start, _ := slices.BinarySearch(settled, g.syncedTo)
	settled = settled[start:]
	if len(settled) > maxScanRequests {
		settled = settled[:maxScanRequests]
		g.syncedTo = settled[len(settled)-1] + "\x00"
	} else {
		g.syncedTo = "" // round done: start over next time
	}
	ask := append(waiting, settled...)
	if len(ask) == 0 {
		return
	}
	got, err := rec.Scans(ctx, ask)
	if err != nil {
		g.warnScanner(ctx, fmt.Sprintf("%d images", len(ask)), err)
		return
	}
	for d, sc := range got {
		if slices.ContainsFunc(held[d], func(s metadata.Scan) bool { return !sameScan(&s, &sc) }) {
			g.ScanResult(ctx, d, sc)
		}
	}
}

// sameScan reports whether a and b are the same report of a scan.
func sameScan(a, b *metadata.Scan) bool {
	return a.State == b.State && a.Attempts == b.Attempts && a.Data == b.Data && a.Error == b.Error &&
		a.Queued.Equal(b.Queued) && a.Started.Equal(b.Started) && a.Finished.Equal(b.Finished)
}

// requestScans queues the scans of images that wait for one none could be
// queued for (the scanner was down, or a policy that checks
// vulnerabilities now covers them), and asks again after scans that have
// been queued or running for long: the scanner reports a result once, to
// the process that did the work, so one that finished while this process
// was going down (its record still says "scanning") is fetched here.
func (g *Gate) requestScans(ctx context.Context) {
	if g.scanner == nil {
		return
	}
	set := g.policies.Load()
	now := g.now()
	type want struct {
		repo string
		d    digest.Digest
		// have is the scan the record holds (nil: none).
		have *metadata.Scan
	}
	var wants []want
	seen := map[digest.Digest]bool{}
	g.mu.RLock()
	for _, img := range g.images {
		if len(wants) >= maxScanRequests {
			break
		}
		if seen[img.Digest] || img.MediaType == "" || !needsScan(set, img) {
			continue
		}
		unsettled := img.Scan != nil && (img.Scan.State == metadata.ScanQueued || img.Scan.State == metadata.ScanRunning) &&
			now.Sub(scanTime(img.Scan)) >= staleScan
		if img.Scan == nil || unsettled {
			seen[img.Digest] = true
			wants = append(wants, want{img.Repository, img.Digest, img.Scan})
		}
	}
	g.mu.RUnlock()
	for _, w := range wants {
		if ctx.Err() != nil {
			return
		}
		var sc *metadata.Scan
		if w.have == nil {
			sc = g.scanFor(ctx, w.repo, w.d)
		} else {
			qctx, cancel := context.WithTimeout(ctx, enqueueTimeout)
			cur, err := g.scanner.Enqueue(qctx, scanner.Job{Repository: w.repo, Digest: w.d})
			cancel()
			if err != nil {
				g.warnScanner(ctx, imageKey(w.repo, w.d), err)
			} else if cur.State != w.have.State || newerScan(&cur, w.have) {
				sc = &cur
			} else {
				continue // still queued or running: nothing new
			}
		}
		if sc == nil {
			return // the scanner is down: the next round tries again
		}
		g.ScanResult(ctx, w.d, *sc)
	}
}
