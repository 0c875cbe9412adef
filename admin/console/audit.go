package console

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Audit reading bounds: a page searches at most maxAuditScan records back
// from where it starts, so a filter that matches nothing costs a bounded
// walk, and says so.
const (
	auditChunk   = 500
	maxAuditScan = 20_000
	auditPerPage = 50
)

// lastSeq finds the newest record's seq. The store pages forward only, and
// seqs count from 1 without gaps, so a doubling probe and a binary search
// find the end in a few dozen one-record reads.
func (c *Console) lastSeq(ctx context.Context) (uint64, error) {
	exists := func(seq uint64) (bool, error) {
		recs, err := c.store.Audit(ctx, seq-1, 1)
		return len(recs) > 0, err
	}
	ok, err := exists(1)
	if err != nil || !ok {
		return 0, err
	}
	lo, hi := uint64(1), uint64(2)
	for {
		ok, err := exists(hi)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, hi = hi, hi*2
	}
	// lo exists, hi does not.
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		ok, err := exists(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// scanBack calls fn on records newest first, starting below before (0:
// from the newest), until fn returns false or max records were read. It
// returns how many it read, the seq of the last one, and whether older
// records remain (pass that seq as before to go on).
func (c *Console) scanBack(ctx context.Context, before uint64, max int, fn func(metadata.AuditRecord) bool) (int, uint64, bool, error) {
	// A before beyond the newest record (an edited URL) starts from the
	// newest: the chunked walk below would otherwise find nothing there
	// and stop.
	last, err := c.lastSeq(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	end := last + 1
	if before != 0 {
		end = min(before, end)
	}
	read, lastRead := 0, uint64(0)
	for end > 1 {
		from := uint64(0)
		if end-1 > auditChunk {
			from = end - 1 - auditChunk
		}
		recs, err := c.store.Audit(ctx, from, int(end-1-from))
		if err != nil {
			return read, lastRead, false, err
		}
		if len(recs) == 0 {
			break
		}
		for i := len(recs) - 1; i >= 0; i-- {
			if recs[i].Seq >= end {
				continue
			}
			read++
			lastRead = recs[i].Seq
			if !fn(recs[i]) || read >= max {
				return read, lastRead, lastRead > 1, nil
			}
		}
		end = recs[0].Seq
	}
	return read, lastRead, false, nil
}

// auditFilter selects audit records.
type auditFilter struct {
	Actor, Action, Repository, Q string
}

func (f auditFilter) match(r metadata.AuditRecord) bool {
	if f.Actor != "" && !strings.Contains(strings.ToLower(r.Actor), strings.ToLower(f.Actor)) {
		return false
	}
	if f.Action != "" && r.Action != f.Action {
		return false
	}
	if f.Repository != "" && r.Repository != f.Repository && !strings.HasPrefix(r.Repository, f.Repository+"/") {
		return false
	}
	if f.Q != "" {
		q := strings.ToLower(f.Q)
		text := strings.ToLower(strings.Join([]string{r.Repository, r.Digest.String(), r.Reason, string(r.From), string(r.To), r.Actor}, " "))
		if !strings.Contains(text, q) {
			return false
		}
	}
	return true
}

// auditActions are the actions the filter offers.
var auditActions = []string{"decide", "redecide", "release", "block", "unblock", "rescan", "expire", "delete"}

type auditData struct {
	Filter    auditFilter
	Actions   []string
	Records   []metadata.AuditRecord
	Check     metadata.AuditCheck
	CheckErr  string
	Before    uint64
	Older     uint64 // before= of the next page, 0 when none
	Scanned   int
	Truncated bool
}

// audit serves the audit log, newest first, with the chain's check.
func (c *Console) audit(w http.ResponseWriter, r *http.Request, v *view) error {
	q := r.URL.Query()
	d := auditData{Actions: auditActions, Filter: auditFilter{Actor: strings.TrimSpace(q.Get("actor")),
		Action: q.Get("action"), Repository: strings.TrimSpace(q.Get("repository")), Q: strings.TrimSpace(q.Get("q"))}}
	for _, s := range []string{d.Filter.Actor, d.Filter.Repository, d.Filter.Q} {
		if len(s) > maxQuery {
			return errorPage(http.StatusBadRequest, "A filter is %d characters; keep each under %d.", len(s), maxQuery)
		}
	}
	if d.Filter.Action != "" && !slices.Contains(auditActions, d.Filter.Action) {
		return errorPage(http.StatusBadRequest, "Unknown action %q.", d.Filter.Action)
	}
	if b := q.Get("before"); b != "" {
		n, err := strconv.ParseUint(b, 10, 64)
		if err != nil || n < 2 {
			return errorPage(http.StatusBadRequest, "before=%q is not a record number above 1.", b)
		}
		d.Before = n
	}
	done, err := c.scan(r.Context())
	if err != nil {
		return err
	}
	defer done()
	scanned, last, more, err := c.scanBack(r.Context(), d.Before, maxAuditScan, func(rec metadata.AuditRecord) bool {
		if d.Filter.match(rec) {
			d.Records = append(d.Records, rec)
		}
		return len(d.Records) < auditPerPage
	})
	if err != nil {
		return err
	}
	d.Scanned = scanned
	if more {
		d.Older = last
	}
	// The search stopped at its bound before filling the page.
	d.Truncated = more && len(d.Records) < auditPerPage
	if check, err := c.store.VerifyAudit(r.Context()); err != nil {
		d.CheckErr = err.Error()
	} else {
		d.Check = check
	}
	done()
	c.render(w, r, http.StatusOK, "audit", v, d)
	return nil
}
