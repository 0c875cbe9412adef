package console

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Listing bounds. The store pages in key order and filters by state,
// upstream and repository; text search and sorting happen here, over at
// most maxScan images (the gate holds them all in memory anyway).
const (
	perPage    = 50
	maxScan    = 100_000
	storePage  = 1000
	maxQuery   = 200
	maxPageNum = maxScan / perPage
)

// sorts are the orders the images table offers, each with its label.
var sorts = []struct{ Key, Label string }{
	{"updated", "Last change"},
	{"firstseen", "First seen"},
	{"lastpulled", "Last pulled"},
	{"pulls", "Pulls"},
	{"repository", "Repository"},
	{"state", "State"},
}

type imagesData struct {
	State, Upstream, Repository, Q, Sort string
	// Scan filters by vulnerability scan (see scanFilters).
	Scan        string
	Sorts       []struct{ Key, Label string }
	ScanFilters []struct{ Key, Label string }
	Images      []metadata.Image
	Total       int
	Page, Pages int
	Truncated   bool
}

// images serves the images table.
func (c *Console) images(w http.ResponseWriter, r *http.Request, v *view) error {
	q := r.URL.Query()
	d := imagesData{State: q.Get("state"), Upstream: q.Get("upstream"), Repository: q.Get("repository"),
		Q: strings.TrimSpace(q.Get("q")), Sort: q.Get("sort"), Scan: q.Get("scan"), Sorts: sorts, ScanFilters: scanFilters, Page: 1}
	query, err := imageQuery(d.State, d.Upstream, d.Repository)
	if err != nil {
		return err
	}
	if len(d.Q) > maxQuery {
		return errorPage(http.StatusBadRequest, "The search text is %d characters; keep it under %d.", len(d.Q), maxQuery)
	}
	if d.Sort == "" {
		d.Sort = "updated"
	}
	if !slices.ContainsFunc(sorts, func(s struct{ Key, Label string }) bool { return s.Key == d.Sort }) {
		return errorPage(http.StatusBadRequest, "Unknown sort %q.", d.Sort)
	}
	if d.Scan != "" && !slices.ContainsFunc(scanFilters, func(s struct{ Key, Label string }) bool { return s.Key == d.Scan }) {
		return errorPage(http.StatusBadRequest, "Unknown scan filter %q; the filters are pending, failed, done and findings.", d.Scan)
	}
	if p := q.Get("page"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > maxPageNum {
			return errorPage(http.StatusBadRequest, "Page %q is not a number from 1 to %d.", p, maxPageNum)
		}
		d.Page = n
	}
	done, err := c.scan(r.Context())
	if err != nil {
		return err
	}
	defer done()
	all, truncated, err := c.scanImages(r.Context(), query, func(img metadata.Image) bool {
		return scanMatches(img, d.Scan) && (d.Q == "" || matches(img, d.Q))
	})
	if err != nil {
		return err
	}
	d.Truncated = truncated
	sortImages(all, d.Sort)
	d.Total = len(all)
	d.Pages = max(1, (d.Total+perPage-1)/perPage)
	start := min((d.Page-1)*perPage, d.Total)
	// A copy, so that the whole table is garbage while the page is written.
	d.Images = slices.Clone(all[start:min(start+perPage, d.Total)])
	done()
	c.render(w, r, http.StatusOK, "images", v, d)
	return nil
}

// imageQuery checks the filters as the API does.
func imageQuery(state, upstream, repository string) (metadata.ImageQuery, error) {
	q := metadata.ImageQuery{State: metadata.State(state), Upstream: upstream, Repository: repository}
	if state != "" && !slices.Contains(allStates, q.State) {
		return q, errorPage(http.StatusBadRequest, "Unknown state %q; the states are pending, approved, quarantined, released and blocked.", state)
	}
	if upstream != "" {
		if err := admin.CheckUpstream(upstream); err != nil {
			return q, errorPage(http.StatusBadRequest, "%v.", err)
		}
	}
	if repository != "" {
		if err := admin.CheckRepository(repository); err != nil {
			return q, errorPage(http.StatusBadRequest, "%v.", err)
		}
	}
	return q, nil
}

// scanImages reads every image q selects and keep (nil: all) keeps, of
// the first maxScan the store lists. The images come without their scan's
// findings, which can be thousands each: the tables show counts and
// reasons, and an image's own page reads it whole.
func (c *Console) scanImages(ctx context.Context, q metadata.ImageQuery, keep func(metadata.Image) bool) ([]metadata.Image, bool, error) {
	var all []metadata.Image
	read := 0
	q.Limit = storePage
	for {
		page, err := c.store.Images(ctx, q)
		if err != nil {
			return nil, false, err
		}
		for _, img := range page.Images {
			if read == maxScan {
				return all, true, nil
			}
			read++
			if keep != nil && !keep(img) {
				continue
			}
			if img.Scan != nil && img.Scan.Findings != nil {
				sc := *img.Scan
				sc.Findings = nil
				img.Scan = &sc
			}
			all = append(all, img)
		}
		if page.Next == "" || page.Next == q.After {
			return all, false, nil
		}
		q.After = page.Next
	}
}

// matches reports whether text occurs (case-insensitively) in the image's
// repository, digest, tags or reasons.
func matches(img metadata.Image, text string) bool {
	text = strings.ToLower(text)
	has := func(s string) bool { return strings.Contains(strings.ToLower(s), text) }
	if has(img.Repository) || has(img.Digest.String()) || has(string(img.State)) {
		return true
	}
	for _, t := range img.Tags {
		if has(img.Repository+":"+t) || has(t) {
			return true
		}
	}
	for _, r := range img.Reasons {
		if has(r.Message) || has(r.Policy) || has(r.ID) || has(r.Package) {
			return true
		}
	}
	if img.Scan != nil {
		for _, f := range img.Scan.Findings {
			if has(f.ID) || has(f.Package) {
				return true
			}
		}
	}
	return img.Override != nil && has(img.Override.Reason)
}

// stateRank orders states by how much they need attention.
var stateRank = map[metadata.State]int{metadata.StateBlocked: 0, metadata.StateQuarantined: 1,
	metadata.StatePending: 2, metadata.StateReleased: 3, metadata.StateApproved: 4}

func sortImages(imgs []metadata.Image, key string) {
	slices.SortStableFunc(imgs, func(a, b metadata.Image) int {
		switch key {
		case "firstseen":
			return b.FirstSeen.Compare(a.FirstSeen)
		case "lastpulled":
			return b.LastPulled.Compare(a.LastPulled)
		case "pulls":
			return cmp.Compare(b.Pulls, a.Pulls)
		case "repository":
			return cmp.Or(cmp.Compare(a.Repository, b.Repository), cmp.Compare(a.Digest, b.Digest))
		case "state":
			return cmp.Or(cmp.Compare(stateRank[a.State], stateRank[b.State]), b.UpdatedAt.Compare(a.UpdatedAt))
		}
		return b.UpdatedAt.Compare(a.UpdatedAt)
	})
}
