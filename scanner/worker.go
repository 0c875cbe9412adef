package scanner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/quay/claircore"
	"github.com/quay/claircore/libvuln/driver"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Run scans queued manifests with Config.Concurrency workers until ctx
// ends or Close is called, watches the vulnerability data to re-check
// what was scanned, and runs the updaters when Config.Updaters.Sets names
// any. A database that cannot be reached is logged and waited out, not
// returned. Run returns nil when stopped; a job being scanned then goes
// back to the queue.
func (s *Scanner) Run(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return errors.New("scanner: Run after Close")
	case s.running:
		s.mu.Unlock()
		return errors.New("scanner: Run is already running")
	}
	ctx, stop := context.WithCancel(ctx)
	s.running, s.stop, s.runDone = true, stop, make(chan struct{})
	done := s.runDone
	s.mu.Unlock()
	defer func() {
		stop()
		s.mu.Lock()
		s.running, s.stop = false, nil
		s.mu.Unlock()
		close(done)
	}()

	var wg sync.WaitGroup
	spawn := func(f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx)
		}()
	}
	for i := 0; i < s.cfg.Concurrency; i++ {
		spawn(s.work)
	}
	spawn(s.listen)
	spawn(s.watchData)
	spawn(s.measure)
	if s.updates != nil {
		spawn(s.runUpdates)
	}
	s.log.Info("scanner running", "workers", s.cfg.Concurrency, "updaterSets", s.cfg.Updaters.Sets)
	wg.Wait()
	return nil
}

// sleep waits for d, a nudge on c, or the end of ctx; false means ctx
// ended.
func sleep(ctx context.Context, d time.Duration, c <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-c:
	case <-t.C:
	}
	return true
}

// work is one worker: claim a job, scan it, record the outcome.
func (s *Scanner) work(ctx context.Context) {
	var downSince time.Time
	for ctx.Err() == nil {
		j, err := s.claim(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// Log once per outage, not once per poll.
			if downSince.IsZero() {
				downSince = time.Now()
				s.log.Error("scanner: cannot claim scan jobs: new images stay unscanned until the database is back", "err", unavailable(err))
			}
			sleep(ctx, s.tune.poll, nil)
			continue
		}
		if !downSince.IsZero() {
			s.log.Info("scanner: the database is back", "down", time.Since(downSince).Round(time.Second))
			downSince = time.Time{}
		}
		if j == nil {
			sleep(ctx, s.tune.poll, s.wake)
			continue
		}
		// More may be waiting: let an idle worker look too.
		s.nudge(s.wake)
		s.process(ctx, j)
	}
}

// Reasons a scan's context ends early.
var (
	errLeaseLost = errors.New("this process lost the job's lease")
	errTimeout   = errors.New("the scan took longer than scanner.timeout")
)

// process scans a claimed job and records the outcome, unless the lease
// was lost (another process has the job now) or the scanner is stopping
// (the job goes back to the queue).
func (s *Scanner) process(ctx context.Context, j *job) {
	log := s.log.With("digest", j.Digest, "repository", j.Repository, "attempt", j.attempts)
	if j.prev == metadata.ScanRunning {
		log.Warn("scanner: taking over a scan whose worker stopped renewing its lease")
	}
	if j.attempts > s.cfg.Attempts {
		// Only a job whose worker kept dying gets here: failures that
		// return count their attempts below.
		msg := fmt.Sprintf("the scan was interrupted %d times (its worker stopped before finishing); rescan it to try again", j.attempts-1)
		now := s.clock()
		if ok, err := s.fail(ctx, j, msg, now); err == nil && ok {
			s.metrics.scans.WithLabelValues("failed").Inc()
			s.report(ctx, j.Digest, metadata.Scan{State: metadata.ScanFailed, Queued: j.queued, Started: *j.started, Finished: now, Attempts: j.attempts, Error: msg})
		}
		return
	}
	started := *j.started // set by the claim
	s.report(ctx, j.Digest, metadata.Scan{State: metadata.ScanRunning, Queued: j.queued, Started: started, Attempts: j.attempts})

	scanCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	scanCtx, cancelTimeout := context.WithTimeoutCause(scanCtx, s.cfg.Timeout.Std(), errTimeout)
	defer cancelTimeout()
	hb := make(chan struct{})
	go func() {
		defer close(hb)
		s.heartbeat(scanCtx, j, cancel)
	}()
	t0 := time.Now()
	sc, err := s.scan(scanCtx, j)
	cancel(nil)
	<-hb

	// Recording the outcome must not be cut short by the shutdown that
	// may have ended the scan.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), s.tune.reachable)
	defer rcancel()
	if err == nil {
		sc.Queued, sc.Started, sc.Finished, sc.Attempts = j.queued, started, s.clock(), j.attempts
		ok, ferr := s.finish(rctx, j, sc)
		if ferr != nil || !ok {
			// Not held: a rescan superseded it. An error: the lease runs
			// out and the scan runs again.
			log.Warn("scanner: could not record a finished scan", "err", ferr, "held", ok)
			return
		}
		s.metrics.scans.WithLabelValues("done").Inc()
		s.metrics.scanSeconds.Observe(time.Since(t0).Seconds())
		s.metrics.waitSeconds.Observe(sc.Finished.Sub(j.queued).Seconds())
		log.Info("scanner: scanned", "findings", len(sc.Findings), "packages", sc.Packages, "distribution", sc.Distribution, "note", sc.Note, "took", time.Since(t0).Round(time.Millisecond))
		// Recorded: report it even if the scanner is stopping now.
		s.report(context.WithoutCancel(ctx), j.Digest, sc)
		return
	}
	if ctx.Err() != nil {
		if err := s.release(rctx, j); err != nil {
			log.Warn("scanner: stopping: could not give the job back; it is taken again when its lease ends", "err", err)
		}
		return
	}
	if errors.Is(context.Cause(scanCtx), errLeaseLost) {
		log.Warn("scanner: the job was taken from this worker (a rescan, or its lease ran out while the database was unreachable); its result is dropped")
		return
	}
	if errors.Is(context.Cause(scanCtx), errTimeout) {
		err = fmt.Errorf("%w (%s): %w", errTimeout, s.cfg.Timeout, err)
	}
	msg := err.Error()
	var perm permanentError
	if j.attempts >= s.cfg.Attempts || errors.As(err, &perm) {
		now := s.clock()
		if ok, ferr := s.fail(rctx, j, msg, now); ferr != nil || !ok {
			log.Warn("scanner: could not record a failed scan", "err", ferr, "held", ok)
			return
		}
		s.metrics.scans.WithLabelValues("failed").Inc()
		log.Error("scanner: scan failed", "err", err)
		s.report(ctx, j.Digest, metadata.Scan{State: metadata.ScanFailed, Queued: j.queued, Started: started, Finished: now, Attempts: j.attempts, Error: msg})
		return
	}
	delay := s.backoff(j.attempts)
	if ok, ferr := s.retry(rctx, j, msg, delay); ferr != nil || !ok {
		log.Warn("scanner: could not queue a retry", "err", ferr, "held", ok)
		return
	}
	s.metrics.scans.WithLabelValues("retried").Inc()
	log.Warn("scanner: scan attempt failed; retrying", "err", err, "in", delay)
	// Started is the failed attempt's, as the record keeps it: a report
	// that looked older than the attempt's would be taken for a stale one.
	s.report(ctx, j.Digest, metadata.Scan{State: metadata.ScanQueued, Queued: j.queued, Started: started, Attempts: j.attempts, Error: msg})
}

// backoff is the delay before attempt n+1: doubling from tune.backoff.
func (s *Scanner) backoff(n int) time.Duration {
	d := s.tune.backoff
	for i := 1; i < n && d < s.tune.maxDelay; i++ {
		d *= 2
	}
	return min(d, s.tune.maxDelay)
}

// heartbeat renews the lease until ctx ends. When the lease is lost, or
// cannot be renewed before it would run out, it cancels the scan: another
// process may have the job by then.
func (s *Scanner) heartbeat(ctx context.Context, j *job, cancel context.CancelCauseFunc) {
	renewed := time.Now()
	t := time.NewTicker(s.tune.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, rcancel := context.WithTimeout(ctx, s.tune.heartbeat)
		ok, err := s.renew(rctx, j)
		rcancel()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && ok:
			renewed = time.Now()
		case err == nil && !ok:
			cancel(errLeaseLost)
			return
		case time.Since(renewed) > s.tune.lease-s.tune.heartbeat:
			cancel(fmt.Errorf("%w: %w", errLeaseLost, err))
			return
		}
	}
}

// scan indexes and matches one manifest.
func (s *Scanner) scan(ctx context.Context, j *job) (metadata.Scan, error) {
	raw, mt, err := s.opts.Content.Manifest(ctx, j.Repository, j.Digest)
	if err != nil {
		return metadata.Scan{}, fmt.Errorf("reading the manifest: %w", err)
	}
	img, err := parseManifest(raw, mt)
	if err != nil {
		return metadata.Scan{}, err
	}
	if img.note != "" {
		return metadata.Scan{State: metadata.ScanDone, Note: img.note}, nil
	}
	hash, err := claircore.ParseDigest(j.Digest.String())
	if err != nil {
		return metadata.Scan{}, permanent(err)
	}
	if j.fresh {
		if _, err := s.index.DeleteManifests(ctx, hash); err != nil {
			return metadata.Scan{}, fmt.Errorf("forgetting the previous index report: %w", err)
		}
	}
	m := &claircore.Manifest{Hash: hash}
	for _, l := range img.layers {
		lh, err := claircore.ParseDigest(l.Digest.String())
		if err != nil {
			return metadata.Scan{}, permanent(fmt.Errorf("layer %s: %w", l.Digest, err))
		}
		// Only the hash is set: the realizer initialises the layer.
		m.Layers = append(m.Layers, &claircore.Layer{Hash: lh})
	}
	ir, err := s.index.Index(withRepository(ctx, j.Repository), m)
	if err != nil {
		return metadata.Scan{}, fmt.Errorf("indexing: %w", err)
	}
	if !ir.Success {
		return metadata.Scan{}, fmt.Errorf("indexing: %s", ir.Err)
	}
	sc, err := s.match(ctx, ir)
	if err != nil {
		return metadata.Scan{}, err
	}
	sc.Layers, sc.Size = len(img.layers), img.size
	return sc, nil
}

// match matches an index report against the current vulnerability data.
// Data names that data; should an update land while matching, the
// report is matched again, so a result never claims newer data than it
// saw.
func (s *Scanner) match(ctx context.Context, ir *claircore.IndexReport) (metadata.Scan, error) {
	for try := 0; ; try++ {
		before, err := s.dataRef(ctx)
		if err != nil {
			return metadata.Scan{}, err
		}
		vr, err := s.vuln.Scan(ctx, ir)
		if err != nil {
			return metadata.Scan{}, fmt.Errorf("matching: %w", err)
		}
		after, err := s.dataRef(ctx)
		if err != nil {
			return metadata.Scan{}, err
		}
		if before == after || try == 2 {
			sc := convert(ir, vr)
			sc.Data = before
			return sc, nil
		}
	}
}

// dataRef names the vulnerability data now in the database: the newest
// update operation's reference, empty when there is none.
func (s *Scanner) dataRef(ctx context.Context) (string, error) {
	ref, err := s.vuln.LatestUpdateOperation(ctx, driver.VulnerabilityKind)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil // no vulnerability data yet
	}
	if err != nil {
		return "", fmt.Errorf("reading the vulnerability data's version: %w", err)
	}
	if ref == [16]byte{} {
		return "", nil
	}
	return ref.String(), nil
}
