package console

import (
	"context"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// maxFindings bounds the findings an image page lists: an image of a
// large distribution can have thousands, and the CLI and the API list
// them all.
const maxFindings = 500

// vulnsData is the image page's Vulnerabilities panel.
type vulnsData struct {
	Scan *metadata.Scan
	// Counts are the findings per severity, worst first, leaving out
	// severities with none.
	Counts []sevCount
	Total  int
	// Findings are the first maxFindings, worst first; More counts the
	// rest.
	Findings []admin.Finding
	More     int
	Blocking int
	Waived   int
	// Refused are the reasons of type vulnerability in a few words, with
	// their policies.
	Refused []string
	// SBOM is set when the SBOM can be downloaded: scanning is on and the
	// scan is done.
	SBOM bool
}

type sevCount struct {
	Severity string
	Count    int
}

// vulns builds the panel; nil when the image has no scan.
func (c *Console) vulns(img metadata.Image) *vulnsData {
	if img.Scan == nil {
		return nil
	}
	d := &vulnsData{Scan: img.Scan, SBOM: c.sboms != nil && img.Scan.State == metadata.ScanDone && !admin.IsIndex(img)}
	sum := admin.Summarize(img)
	d.Total, d.Blocking, d.Waived = sum.Findings, sum.Blocking, sum.Waived
	for _, sev := range admin.Severities() {
		if n := sum.BySeverity[sev]; n > 0 {
			d.Counts = append(d.Counts, sevCount{sev, n})
		}
	}
	all := admin.Findings(img)
	d.Findings = all[:min(len(all), maxFindings)]
	d.More = len(all) - len(d.Findings)
	var refused []metadata.Reason
	for _, r := range img.Reasons {
		if r.Type == metadata.ReasonVulnerability {
			refused = append(refused, r)
		}
	}
	d.Refused = admin.ShortReasons(refused)
	return d
}

// sevClass is the CSS class of a severity: one of the six, whatever the
// data says.
func sevClass(s string) string {
	if admin.SeverityRank(s) == 0 {
		return "sev-" + metadata.SeverityUnknown
	}
	return "sev-" + s
}

// findingLink is where a finding's advisory is read: its own link when it
// is a plain http(s) address, else the advisory database its id names.
// Links come from vulnerability data, which is the upstream feeds' to
// write; anything else (javascript:, data:, a relative path) is dropped.
func findingLink(f metadata.Finding) string {
	if safe := safeLink(f.Link); safe != "" {
		return safe
	}
	return advisoryURL(f.ID)
}

func safeLink(s string) string {
	if s == "" || len(s) > 2048 || strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return ""
	}
	return u.String()
}

// platformStates are the states of an index's platforms that have image
// records of their own (they do where a policy scans them).
func (c *Console) platformStates(ctx context.Context, img metadata.Image, shown []metadata.Platform) map[digest.Digest]metadata.State {
	if len(shown) == 0 {
		return nil
	}
	states := map[digest.Digest]metadata.State{}
	for _, p := range shown {
		if rec, err := c.store.Image(ctx, img.Repository, p.Digest); err == nil {
			states[p.Digest] = rec.State
		}
	}
	return states
}

// sbom serves GET /ui/images/<ref>/sbom?format=: the SBOM as a download.
func (c *Console) sbom(w http.ResponseWriter, r *http.Request, ref admin.Reference) error {
	format, err := admin.SBOMFormat(r.URL.Query().Get("format"))
	if err != nil {
		return errorPage(http.StatusBadRequest, "%s.", capitalize(err.Error()))
	}
	img, err := c.store.Image(r.Context(), ref.Repository, ref.Digest)
	if errors.Is(err, storage.ErrNotFound) {
		return errorPage(http.StatusNotFound, "Airlock has not seen %s.", ref)
	}
	if err != nil {
		return err
	}
	doc, err := admin.FetchSBOM(r.Context(), c.sboms, img, format)
	if err != nil {
		return err
	}
	ct, _ := admin.SBOMContentType(format)
	ext := ".spdx.json"
	if format == scanner.FormatCycloneDX {
		ext = ".cdx.json"
	}
	// The repository's last component and the digest are [a-z0-9._-]:
	// nothing in the name needs quoting beyond what FormatMediaType does.
	name := path.Base(img.Repository) + "-" + img.Digest.Encoded()[:min(12, len(img.Digest.Encoded()))] + ext
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	h.Set("Content-Length", strconv.Itoa(len(doc)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(doc)
	}
	return nil
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// scanPending reports whether img waits for its scan.
func scanPending(img metadata.Image) bool {
	return img.Scan != nil && (img.Scan.State == metadata.ScanQueued || img.Scan.State == metadata.ScanRunning)
}

// scanFilters are the images table's scan filters, each with its label.
var scanFilters = []struct{ Key, Label string }{
	{"pending", "pending"},
	{"failed", "failed"},
	{"done", "done"},
	{"findings", "with findings"},
}

// scanMatches reports whether img passes the images table's scan filter.
func scanMatches(img metadata.Image, filter string) bool {
	switch filter {
	case "":
		return true
	case "pending":
		return scanPending(img)
	case "failed":
		return img.Scan != nil && img.Scan.State == metadata.ScanFailed
	case "done":
		return img.Scan != nil && img.Scan.State == metadata.ScanDone
	case "findings":
		return img.Scan != nil && len(img.Scan.Findings) > 0
	}
	return false
}

// platformRow is what the platforms table shows of one: its name, and
// its state and page when it has a record of its own.
type platformRow struct {
	Repository string
	Digest     digest.Digest
	Name       string
	State      metadata.State
}

func newPlatformRow(repo string, p any, states map[digest.Digest]metadata.State) platformRow {
	var pl metadata.Platform
	switch v := p.(type) {
	case metadata.Platform:
		pl = v
	case platformFacts:
		pl = v.Platform
	}
	name := pl.OS + "/" + pl.Architecture
	if pl.Variant != "" {
		name += "/" + pl.Variant
	}
	return platformRow{Repository: repo, Digest: pl.Digest, Name: name, State: states[pl.Digest]}
}
