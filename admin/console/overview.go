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
	all, truncated, err := c.scanImages(ctx, metadata.ImageQuery{})
	if err != nil {
		return err
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
