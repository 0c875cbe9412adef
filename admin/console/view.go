package console

import (
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// view is the signed-in request a page is rendered for.
type view struct {
	c    *Console
	sess *session
	r    *http.Request
}

// Actor is the signed-in token's name as the audit log records it.
func (v *view) Actor() string { return v.sess.cred.Actor }

// CSRF is the session's form token.
func (v *view) CSRF() string { return v.sess.csrf }

// Expires is when the session ends at the latest.
func (v *view) Expires() time.Time { return v.sess.expires }

func (c *Console) funcs() template.FuncMap {
	return template.FuncMap{
		"imageURL":     imageURL,
		"shortDigest":  shortDigest,
		"advisory":     advisoryURL,
		"time":         formatTime,
		"ago":          func(t time.Time) string { return ago(c.now(), t) },
		"bytes":        formatBytes,
		"percent":      func(f float64) string { return fmt.Sprintf("%.1f %%", f*100) },
		"summary":      summary,
		"states":       func() []metadata.State { return allStates },
		"join":         strings.Join,
		"query":        query,
		"actionVerb":   actionVerb,
		"stateOf":      func(s metadata.State) string { return stateWord(s) },
		"add":          func(a, b int) int { return a + b },
		"fromWord":     func(s metadata.State) string { return cmpOr(string(s), "new") },
		"toWord":       func(s metadata.State) string { return cmpOr(string(s), "deleted") },
		"recordReason": recordReason,
		"findingLink":  findingLink,
		"sevClass":     sevClass,
		"scanPending":  scanPending,
		"duration":     duration,
		"platformRow":  newPlatformRow,
		"isIndex":      admin.IsIndex,
		// first bounds a list a client or an upstream can grow (an
		// image's tags: one per tag pulled).
		"first": func(n int, s []string) []string { return s[:min(n, len(s))] },
	}
}

var allStates = []metadata.State{metadata.StatePending, metadata.StateApproved, metadata.StateQuarantined,
	metadata.StateReleased, metadata.StateBlocked}

func stateWord(s metadata.State) string {
	if s == "" {
		return "unknown"
	}
	return string(s)
}

// imageURL is the console page of repo@d.
func imageURL(repo string, d digest.Digest) string {
	return Prefix + "images/" + escapePath(repo) + "@" + d.String()
}

func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// shortDigest is the algorithm and the first 12 hex digits, as people
// quote digests.
func shortDigest(d any) string {
	s := fmt.Sprint(d)
	if i := strings.IndexByte(s, ':'); i >= 0 && len(s) > i+13 {
		return s[:i+13]
	}
	return s
}

// advisoryID is the shape of a vulnerability id that may go into a link.
var advisoryID = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*-[A-Za-z0-9._:-]{1,80}$`)

// advisoryURL links a vulnerability id to its advisory: NVD for CVEs,
// GitHub's database for GHSAs, OSV for the rest. Empty for an id that
// does not look like one.
func advisoryURL(id string) string {
	switch {
	case !advisoryID.MatchString(id):
		return ""
	case strings.HasPrefix(id, "CVE-"):
		return "https://nvd.nist.gov/vuln/detail/" + id
	case strings.HasPrefix(id, "GHSA-"):
		return "https://github.com/advisories/" + id
	}
	return "https://osv.dev/vulnerability/" + url.PathEscape(id)
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// ago says how long before now t was, in the largest unit that fits.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < time.Minute:
		s = fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		s = fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%dh", int(d.Hours()))
	default:
		s = fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// summary is an image's reasons in a few words: the first enforced
// reason's message, cut at a word, and how many more there are. The
// vulnerabilities count as one reason that names the worst of them.
func summary(img metadata.Image) string {
	var enforced []metadata.Reason
	for _, r := range img.Reasons {
		if r.Mode != "audit" {
			enforced = append(enforced, r)
		}
	}
	short := admin.ShortReasons(enforced)
	if len(short) == 0 {
		if img.Override != nil {
			return img.Override.Action + " by " + img.Override.By + ": " + cut(img.Override.Reason, 80)
		}
		switch {
		case img.Scan == nil:
		case img.Scan.State == metadata.ScanQueued:
			return "waiting for a vulnerability scan"
		case img.Scan.State == metadata.ScanRunning:
			return "being scanned for vulnerabilities"
		case img.Scan.State == metadata.ScanFailed && img.State == metadata.StatePending:
			return "vulnerability scan failed: " + cut(img.Scan.Error, 60)
		}
		return ""
	}
	s := cut(short[0], 80)
	if len(short) > 1 {
		s += fmt.Sprintf(" (+%d more)", len(short)-1)
	}
	return s
}

// duration is the time from a to b, rounded to the second; "" when
// either is unknown or b is before a.
func duration(a, b time.Time) string {
	if a.IsZero() || b.IsZero() || b.Before(a) {
		return ""
	}
	return b.Sub(a).Round(time.Second).String()
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if i := strings.LastIndexByte(s[:n], ' '); i > n/2 {
		return s[:i] + "…"
	}
	return s[:n] + "…"
}

// query builds a query string from key, value pairs, leaving out empty
// values.
func query(kv ...string) template.URL {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Set(kv[i], kv[i+1])
		}
	}
	if len(q) == 0 {
		return ""
	}
	return template.URL("?" + q.Encode())
}

func actionVerb(action string) string {
	switch action {
	case "release":
		return "Release"
	case "block":
		return "Block"
	case "unblock":
		return "Unblock"
	case "rescan":
		return "Rescan"
	}
	return action
}

// recordReason is what an audit record says about why: its reason, or for
// a policy's decision the findings it recorded.
func recordReason(r metadata.AuditRecord) string {
	if r.Reason != "" && (r.Action != "decide" || len(r.Reasons) == 0) {
		return r.Reason
	}
	var parts []string
	for _, rs := range r.Reasons {
		parts = append(parts, rs.Message)
	}
	if len(parts) == 0 {
		return r.Reason
	}
	return strings.Join(parts, "; ")
}
