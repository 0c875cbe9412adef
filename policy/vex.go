package policy

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// OpenVEX statuses. Only StatusNotAffected and StatusFixed waive a
// finding; the others say it stands.
const (
	StatusNotAffected        = "not_affected"
	StatusAffected           = "affected"
	StatusFixed              = "fixed"
	StatusUnderInvestigation = "under_investigation"
)

// VEX is a parsed OpenVEX document: what its author says about
// vulnerabilities in the images it names.
//
// # Products
//
// A statement's products name images in one of these forms; any other
// product (an IRI, a purl of another type such as pkg:deb or pkg:golang,
// an image by tag) names no image airlock serves and is skipped:
//
//   - "sha256:<hex>": the manifest of that digest in any repository, and
//     for a platform pulled through an image index of that digest, the
//     platform (a statement about a multi-platform image holds for each of
//     its platforms).
//   - "<upstream>/<repository>": every image of that airlock repository.
//   - "<upstream>/<repository>@sha256:<hex>": that digest there.
//   - "pkg:oci/<name>@sha256%3A<hex>[?repository_url=<registry>/<path>]":
//     the digest, as above; with a repository_url only in the repository
//     the URL names. "pkg:oci/<name>?repository_url=..." without a digest
//     names every image of that repository. A repository_url names the
//     airlock repository "<upstream>/<path>" when it is exactly that
//     (written with the upstream's name), or when its first segment is a
//     registry host (it holds a '.' or ':', or is localhost) and the rest
//     is <path>, Docker Hub's one-segment names read as library/<name>.
//     The host is not compared with the upstream's: a document naming
//     quay.io/org/app covers dockerhub/org/app too when both match the
//     policy, so list a vendor's documents in policies whose match covers
//     the vendor's upstream, or name digests.
//
// A product's subcomponents limit the statement to findings in those
// packages: a purl's name, or namespace and name joined by '/' or ':' (as
// Go modules, npm scopes and Maven coordinates name packages), or the
// string as written.
//
// # Which statement counts
//
// As OpenVEX says, the latest statement about a vulnerability and a
// product is the one in force: by last_updated, else timestamp (the
// statement's, else the document's); on a tie, the later one in the
// policy's list of documents and within a document. A finding is waived
// when the latest statement that names its id (as the vulnerability's
// name or one of its aliases), names an image the subject is, and covers
// its package says not_affected or fixed.
type VEX struct {
	// Path is the file the document was read from, as configured.
	Path       string
	statements []vexStatement
}

// vexStatement is one statement, compiled.
type vexStatement struct {
	ids      []string // the vulnerability's name and aliases, upper case
	products []vexProduct
	status   string
	reason   string // what a waived finding records
	at       time.Time
}

// vexProduct is one image a statement names. A zero field matches every
// image; at least one is set.
type vexProduct struct {
	digest digest.Digest
	// repo is an airlock repository, "<upstream>/<path>".
	repo string
	// path is a repository path after a registry host: it matches the
	// airlock repository <any upstream>/<path>.
	path string
	// limited says the statement is about packages only, not the whole
	// image.
	limited  bool
	packages []string
}

// openVEX is the JSON form of a document: v0.2.0, and the string forms of
// v0.0.x for vulnerabilities and products.
type openVEX struct {
	Context     string          `json:"@context"`
	Timestamp   string          `json:"timestamp"`
	LastUpdated string          `json:"last_updated"`
	Statements  []jsonStatement `json:"statements"`
}

type jsonStatement struct {
	Vulnerability jsonVulnerability `json:"vulnerability"`
	Products      []jsonProduct     `json:"products"`
	// Subcomponents of v0.0.x, for every product.
	Subcomponents   []jsonProduct `json:"subcomponents"`
	Status          string        `json:"status"`
	Justification   string        `json:"justification"`
	ImpactStatement string        `json:"impact_statement"`
	StatusNotes     string        `json:"status_notes"`
	Timestamp       string        `json:"timestamp"`
	LastUpdated     string        `json:"last_updated"`
}

type jsonVulnerability struct {
	Name    string   `json:"name"`
	Aliases []string `json:"aliases"`
}

func (v *jsonVulnerability) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &v.Name)
	}
	type plain jsonVulnerability
	return json.Unmarshal(b, (*plain)(v))
}

type jsonProduct struct {
	ID          string `json:"@id"`
	Identifiers struct {
		PURL string `json:"purl"`
	} `json:"identifiers"`
	Subcomponents []jsonProduct `json:"subcomponents"`
}

func (p *jsonProduct) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		return json.Unmarshal(b, &p.ID)
	}
	type plain jsonProduct
	return json.Unmarshal(b, (*plain)(p))
}

// name is the product's identifier: its @id, else its purl.
func (p jsonProduct) name() string {
	if p.ID != "" {
		return p.ID
	}
	return p.Identifiers.PURL
}

// ParseVEX reads an OpenVEX JSON document. path names it in errors, which
// say where the document is wrong: a JSON error with its line, a statement
// by its number (from 1) with what it lacks.
func ParseVEX(path string, data []byte) (*VEX, error) {
	var doc openVEX
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, jsonError(data, err))
	}
	if !strings.HasPrefix(doc.Context, "https://openvex.dev/ns") {
		return nil, fmt.Errorf("%s: not an OpenVEX document: its @context is %q, want https://openvex.dev/ns/v0.2.0 or another OpenVEX version (CSAF and CycloneDX VEX are not read)", path, doc.Context)
	}
	docAt, err := vexTime(doc.LastUpdated, doc.Timestamp)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	x := &VEX{Path: path}
	for i, st := range doc.Statements {
		where := fmt.Sprintf("%s: statement %d", path, i+1)
		s := vexStatement{status: st.Status, at: docAt}
		switch st.Status {
		case StatusNotAffected, StatusAffected, StatusFixed, StatusUnderInvestigation:
		case "":
			return nil, fmt.Errorf("%s has no status; want %s, %s, %s or %s", where, StatusNotAffected, StatusAffected, StatusFixed, StatusUnderInvestigation)
		default:
			return nil, fmt.Errorf("%s: unknown status %q; want %s, %s, %s or %s", where, st.Status, StatusNotAffected, StatusAffected, StatusFixed, StatusUnderInvestigation)
		}
		for _, id := range append([]string{st.Vulnerability.Name}, st.Vulnerability.Aliases...) {
			if id = strings.TrimSpace(id); id != "" {
				s.ids = append(s.ids, strings.ToUpper(id))
			}
		}
		if len(s.ids) == 0 {
			return nil, fmt.Errorf("%s names no vulnerability; give vulnerability.name (a CVE or advisory id)", where)
		}
		if len(st.Products) == 0 {
			return nil, fmt.Errorf("%s names no product; list the images it is about in products", where)
		}
		if stAt, err := vexTime(st.LastUpdated, st.Timestamp); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		} else if !stAt.IsZero() {
			s.at = stAt
		}
		for j, jp := range st.Products {
			p, ok, err := parseProduct(jp.name())
			if err != nil {
				return nil, fmt.Errorf("%s: product %d: %w", where, j+1, err)
			}
			if !ok {
				continue
			}
			for _, sub := range append(slices.Clone(jp.Subcomponents), st.Subcomponents...) {
				p.limited = true
				p.packages = append(p.packages, packageNames(sub.name())...)
			}
			s.products = append(s.products, p)
		}
		s.reason = statementReason(st.Status, st.Justification, st.ImpactStatement, st.StatusNotes)
		x.statements = append(x.statements, s)
	}
	return x, nil
}

// jsonError adds the line to a JSON syntax or type error, and words a
// type error in JSON's terms.
func jsonError(data []byte, err error) error {
	var off int64 = -1
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		off = se.Offset
	} else if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		off = te.Offset
		want := "a " + te.Type.Kind().String()
		switch te.Type.Kind() {
		case reflect.Slice, reflect.Array:
			want = "a list"
		case reflect.Struct, reflect.Map:
			want = "an object"
		}
		err = fmt.Errorf("%s is a JSON %s, where OpenVEX has %s", cmp.Or(te.Field, "the document"), te.Value, want)
	}
	if off < 0 || off > int64(len(data)) {
		return fmt.Errorf("not OpenVEX JSON: %w", err)
	}
	return fmt.Errorf("line %d: not OpenVEX JSON: %w", 1+bytes.Count(data[:off], []byte("\n")), err)
}

// vexTime is the first of the times given that is set, parsed.
func vexTime(times ...string) (time.Time, error) {
	for _, s := range times {
		if s == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time", s)
		}
		return t, nil
	}
	return time.Time{}, nil
}

// statementReason is what a finding waived by a statement records.
func statementReason(status, justification, impact, notes string) string {
	r := "VEX: " + status
	if justification != "" {
		r += " (" + justification + ")"
	}
	for _, s := range []string{impact, notes} {
		if s = strings.TrimSpace(s); s != "" {
			r += ": " + s
			break
		}
	}
	return r
}

// parseProduct reads a product's identifier. ok is false for one that
// names no image airlock serves; err is set for one that claims to name
// an image but is malformed.
func parseProduct(id string) (p vexProduct, ok bool, err error) {
	id = strings.TrimSpace(id)
	switch {
	case strings.HasPrefix(id, "pkg:"):
		return parseOCIPurl(id)
	case strings.Contains(id, "://"):
		return p, false, nil
	}
	if repo, dig, found := strings.Cut(id, "@"); found {
		d, err := digest.Parse(dig)
		if err != nil {
			return p, false, fmt.Errorf("%q: %q is not a digest such as sha256:<64 hex digits>", id, dig)
		}
		if !strings.Contains(repo, "/") {
			return p, false, fmt.Errorf("%q: want <upstream>/<repository>@<digest>", id)
		}
		return vexProduct{digest: d, repo: strings.ToLower(repo)}, true, nil
	}
	if d, err := digest.Parse(id); err == nil {
		return vexProduct{digest: d}, true, nil
	}
	if strings.Contains(id, "/") && !strings.ContainsAny(id, ": \t") {
		return vexProduct{repo: strings.ToLower(strings.Trim(id, "/"))}, true, nil
	}
	return p, false, nil
}

// parseOCIPurl reads a pkg:oci purl; other purl types name no image.
func parseOCIPurl(id string) (p vexProduct, ok bool, err error) {
	typ, name, version, qualifiers, err := splitPurl(id)
	if err != nil {
		return p, false, fmt.Errorf("%q: %w", id, err)
	}
	if typ != "oci" {
		return p, false, nil
	}
	if name == "" {
		return p, false, fmt.Errorf("%q: a pkg:oci purl needs a name", id)
	}
	if version != "" {
		if p.digest, err = digest.Parse(version); err != nil {
			return p, false, fmt.Errorf("%q: the version of a pkg:oci purl is the manifest digest, sha256:<64 hex digits> (written sha256%%3A...), not %q", id, version)
		}
	}
	if u := qualifiers.Get("repository_url"); u != "" {
		p.repo, p.path = repositoryURL(u)
	}
	if p.digest == "" && p.repo == "" {
		// "pkg:oci/nginx": which registry, which image? Nothing to match.
		return p, false, nil
	}
	return p, true, nil
}

// splitPurl splits "pkg:type/namespace/name@version?qualifiers#subpath"
// into its type (lower case), name with its namespace ("a/b/name"),
// version and qualifiers, percent-decoded.
func splitPurl(s string) (typ, name, version string, q url.Values, err error) {
	rest := strings.TrimLeft(strings.TrimPrefix(s, "pkg:"), "/")
	rest, _, _ = strings.Cut(rest, "#")
	rest, query, _ := strings.Cut(rest, "?")
	if q, err = url.ParseQuery(query); err != nil {
		return "", "", "", nil, fmt.Errorf("its qualifiers do not parse: %v", err)
	}
	typ, rest, found := strings.Cut(rest, "/")
	if !found || typ == "" {
		return "", "", "", nil, errors.New("not a purl: want pkg:<type>/<name>")
	}
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		if version, err = url.PathUnescape(rest[i+1:]); err != nil {
			return "", "", "", nil, fmt.Errorf("its version does not decode: %v", err)
		}
		rest = rest[:i]
	}
	if name, err = url.PathUnescape(strings.Trim(rest, "/")); err != nil {
		return "", "", "", nil, fmt.Errorf("its name does not decode: %v", err)
	}
	return strings.ToLower(typ), name, version, q, nil
}

// dockerHubHosts are the names of Docker Hub's registry, whose
// one-segment repositories are library/<name>.
var dockerHubHosts = []string{"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

// repositoryURL reads a purl's repository_url as the airlock repository it
// may be written as (repo) and, when it starts with a registry host, the
// repository path on that registry (path).
func repositoryURL(u string) (repo, path string) {
	u = strings.ToLower(strings.TrimSpace(u))
	if _, after, ok := strings.Cut(u, "://"); ok {
		u = after
	}
	u = strings.Trim(u, "/")
	host, rest, ok := strings.Cut(u, "/")
	if !ok || !(strings.ContainsAny(host, ".:") || host == "localhost") {
		return u, ""
	}
	if slices.Contains(dockerHubHosts, host) && !strings.Contains(rest, "/") {
		rest = "library/" + rest
	}
	return u, rest
}

// packageNames are the names a subcomponent may give a finding's package.
func packageNames(id string) []string {
	id = strings.TrimSpace(id)
	if !strings.HasPrefix(id, "pkg:") {
		if id == "" {
			return nil
		}
		return []string{id}
	}
	_, name, _, _, err := splitPurl(id)
	if err != nil || name == "" {
		return []string{id}
	}
	out := []string{name}
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		ns, base := name[:i], name[i+1:]
		out = append(out, base, ns+":"+base)
	}
	return out
}

// matches reports whether p names the image sub is.
func (p *vexProduct) matches(sub *Subject) bool {
	if p.digest != "" && p.digest != sub.Digest && !slices.Contains(sub.Indexes, p.digest) {
		return false
	}
	if p.repo != "" && p.repo != sub.Repository {
		if p.path == "" {
			return false
		}
		_, path, _ := strings.Cut(sub.Repository, "/")
		if path != p.path {
			return false
		}
	}
	return true
}

// covers reports whether p's statement is about pkg.
func (p *vexProduct) covers(pkg string) bool {
	if !p.limited {
		return true
	}
	for _, name := range p.packages {
		if strings.EqualFold(name, pkg) {
			return true
		}
	}
	return false
}
