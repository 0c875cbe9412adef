package console

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Overview bounds.
const (
	newWindow     = 24 * time.Hour
	maxNewListed  = 10
	deniedListed  = 15
	maxNewScanned = 50_000
)

type stateCount struct {
	State metadata.State
	Count int
}

type overviewData struct {
	States    []stateCount
	Total     int
	Truncated bool
	// New are the images quarantined in the last 24 h, newest first.
	New        []metadata.AuditRecord
	NewCount   int
	NewPartial bool
	Stats      *Stats
	StatsErr   string
	Denials    []gate.Denial
	HasDenials bool
	// Scans counts the images by the state of their vulnerability scan;
	// nil when no image has one.
	Scans *scanCounts
}

// scanCounts are the overview's vulnerability scan figures.
type scanCounts struct {
	// Pending counts the images waiting for a scan: queued or running.
	Pending, Queued, Running, Failed, Done int
	// WithFindings counts the scanned images with at least one finding,
	// Refused those a policy refuses for one.
	WithFindings, Refused int
}

func (s *scanCounts) add(img metadata.Image) {
	switch img.Scan.State {
	case metadata.ScanQueued:
		s.Queued++
		s.Pending++
	case metadata.ScanRunning:
		s.Running++
		s.Pending++
	case metadata.ScanFailed:
		s.Failed++
	case metadata.ScanDone:
		s.Done++
	}
	if len(img.Scan.Findings) > 0 {
		s.WithFindings++
	}
	for _, r := range img.Reasons {
		if r.Type == metadata.ReasonVulnerability && r.Mode != "audit" {
			s.Refused++
			break
		}
	}
}

// overview serves the front page.
func (c *Console) overview(w http.ResponseWriter, r *http.Request, v *view) error {
	ctx := r.Context()
	done, err := c.scan(r.Context())
	if err != nil {
		return err
	}
	defer done()
	var d overviewData
	// The counts are taken as the store is read, before the findings
	// are dropped.
	var scans scanCounts
	scanned := false
	all, truncated, err := c.scanImages(ctx, metadata.ImageQuery{}, func(img metadata.Image) bool {
		if img.Scan != nil {
			scanned = true
			scans.add(img)
		}
		return true
	})
	if err != nil {
		return err
	}
	if scanned {
		d.Scans = &scans
	}
	counts := map[metadata.State]int{}
	for _, img := range all {
		counts[img.State]++
	}
	for _, s := range allStates {
		d.States = append(d.States, stateCount{s, counts[s]})
	}
	d.Total, d.Truncated = len(all), truncated

	since := c.now().Add(-newWindow)
	windowDone := false
	_, _, more, err := c.scanBack(ctx, 0, maxNewScanned, func(rec metadata.AuditRecord) bool {
		if rec.Time.Before(since) {
			windowDone = true
			return false
		}
		if rec.To == metadata.StateQuarantined && rec.From != metadata.StateQuarantined {
			d.NewCount++
			if len(d.New) < maxNewListed {
				d.New = append(d.New, rec)
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	// The scan hit its bound before it left the window: there may be more.
	d.NewPartial = more && !windowDone

	if c.stats != nil {
		if s, err := c.stats(ctx); err != nil {
			c.log.LogAttrs(ctx, slog.LevelWarn, "console cannot read the process's measurements", slog.String("error", err.Error()))
			d.StatsErr = "The cache and upstream figures cannot be read now; see the airlock log."
		} else {
			d.Stats = &s
		}
	}
	if c.denials != nil {
		d.HasDenials = true
		d.Denials = c.denials(deniedListed)
	}
	done()
	c.render(w, r, http.StatusOK, "overview", v, d)
	return nil
}
