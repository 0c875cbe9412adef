package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// scanService is the vulnerability scanner of a running airlock. It
// connects in the background and keeps trying: a database that is down at
// start holds new images under policies that check vulnerabilities, it
// does not stop airlock from serving the images it approved.
type scanService struct {
	cfg     config.Scanner
	workDir string
	content scanner.Content
	// result is where scan results go (the gate's ScanResult), set once
	// the gate exists.
	result func(ctx context.Context, d digest.Digest, s metadata.Scan)
	log    *slog.Logger
	reg    prometheus.Registerer

	s atomic.Pointer[scanner.Scanner]
}

// newScanService returns nil when cfg turns scanning off.
func newScanService(cfg *config.Config, content scanner.Content, log *slog.Logger, reg prometheus.Registerer) *scanService {
	if cfg.Scanner.Database == "" && cfg.Scanner.DatabaseFile == "" {
		return nil
	}
	return &scanService{cfg: cfg.Scanner, workDir: filepath.Join(cfg.Storage.Path, "scan"), content: content,
		log: log, reg: reg}
}

// unavailable is the error while the scanner has not connected.
func unavailable() error {
	return fmt.Errorf("%w: airlock is still connecting to it", scanner.ErrUnavailable)
}

func (s *scanService) Enqueue(ctx context.Context, j scanner.Job) (metadata.Scan, error) {
	sc := s.s.Load()
	if sc == nil {
		return metadata.Scan{}, unavailable()
	}
	return sc.Enqueue(ctx, j)
}

func (s *scanService) Rescan(ctx context.Context, j scanner.Job) error {
	sc := s.s.Load()
	if sc == nil {
		return unavailable()
	}
	return sc.Rescan(ctx, j)
}

// Scans reads the recorded scans of ds (the gate catches up on results
// reported elsewhere with it).
func (s *scanService) Scans(ctx context.Context, ds []digest.Digest) (map[digest.Digest]metadata.Scan, error) {
	sc := s.s.Load()
	if sc == nil {
		return nil, unavailable()
	}
	return sc.Scans(ctx, ds)
}

func (s *scanService) SBOM(ctx context.Context, d digest.Digest, format string) ([]byte, error) {
	sc := s.s.Load()
	if sc == nil {
		return nil, unavailable()
	}
	return sc.SBOM(ctx, d, format)
}

// run connects (retrying with backoff while the database cannot be
// reached), then runs the scanner until ctx ends, and closes it.
func (s *scanService) run(ctx context.Context) {
	wait := time.Second
	var sc *scanner.Scanner
	for {
		var err error
		sc, err = scanner.Open(ctx, scanner.Options{Config: s.cfg, Content: s.content, OnResult: s.result,
			WorkDir: s.workDir, Logger: s.log, Registerer: s.reg})
		if err == nil {
			break
		}
		s.log.Error("the vulnerability scanner cannot start; new images under policies that check vulnerabilities are held until it does, approved images are still served",
			slog.String("error", err.Error()), slog.String("retry_in", wait.String()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
	s.s.Store(sc)
	s.log.Info("vulnerability scanner started")
	if err := sc.Run(ctx); err != nil && ctx.Err() == nil {
		s.log.Error("the vulnerability scanner stopped; new images under policies that check vulnerabilities are held until airlock restarts",
			slog.String("error", err.Error()))
	}
	closing, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := sc.Close(closing); err != nil {
		s.log.Warn("closing the vulnerability scanner", slog.String("error", err.Error()))
	}
}

// gateScanner is what the gate gets: the service, or nil (an interface
// holding a nil pointer would not be nil) when scanning is off.
func gateScanner(s *scanService) gate.Scanner {
	if s == nil {
		return nil
	}
	return s
}

// claircoreLogger is where claircore's logs go: it writes to log/slog's
// default logger, which airlock points at its own, under
// component=claircore. claircore reports every layer and manifest at Info;
// those become Debug, so a scanning airlock's log at Info says what airlock
// decided, not each step of the library (log.level: debug shows them).
func claircoreLogger(log *slog.Logger) *slog.Logger {
	return slog.New(demoted{log.Handler()}).With(slog.String("component", "claircore"))
}

// demoted lowers records under Warn to Debug.
type demoted struct{ h slog.Handler }

func (d demoted) Enabled(ctx context.Context, l slog.Level) bool {
	if l < slog.LevelWarn {
		l = slog.LevelDebug
	}
	return d.h.Enabled(ctx, l)
}

func (d demoted) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		r.Level = slog.LevelDebug
	}
	return d.h.Handle(ctx, r)
}

func (d demoted) WithAttrs(as []slog.Attr) slog.Handler { return demoted{d.h.WithAttrs(as)} }
func (d demoted) WithGroup(n string) slog.Handler       { return demoted{d.h.WithGroup(n)} }
