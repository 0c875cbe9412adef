package policy

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

var dIndex = digest.FromString("index")

// vendorVEX is an OpenVEX v0.2.0 document with a statement per rule; each
// statement's vulnerability names the case it is for.
var vendorVEX = `{
  "@context": "https://openvex.dev/ns/v0.2.0",
  "@id": "https://vendor.example/vex/2026-10",
  "author": "Vendor Security",
  "timestamp": "2026-10-01T00:00:00Z",
  "version": 1,
  "statements": [
    {"vulnerability": {"name": "CVE-2024-0001"}, "products": [{"@id": "` + dA.String() + `"}],
     "status": "not_affected", "justification": "vulnerable_code_not_in_execute_path"},
    {"vulnerability": {"@id": "https://github.com/advisories/GHSA-aaaa-bbbb-cccc", "name": "GHSA-aaaa-bbbb-cccc", "aliases": ["CVE-2024-0002"]},
     "products": [{"@id": "hub/library/nginx"}], "status": "fixed"},
    {"vulnerability": {"name": "CVE-2024-0003"},
     "products": [{"@id": "pkg:oci/nginx@sha256%3A` + dB.Encoded() + `?repository_url=docker.io/library/nginx&tag=1.27"}],
     "status": "not_affected", "justification": "component_not_present", "impact_statement": "the module is not built"},
    {"vulnerability": {"name": "CVE-2024-0004"}, "products": [{"@id": "pkg:oci/app?repository_url=quay.io/org/app"}], "status": "not_affected"},
    {"vulnerability": {"name": "CVE-2024-0005"}, "products": [{"@id": "hub/library/nginx"}], "status": "under_investigation"},
    {"vulnerability": {"name": "CVE-2024-0006"},
     "products": [{"@id": "` + dIndex.String() + `", "subcomponents": [{"@id": "pkg:deb/debian/openssl@3.0.11-1?arch=amd64"}]}],
     "status": "not_affected", "status_notes": "built without the affected engine"},
    {"vulnerability": {"name": "CVE-2024-0007"}, "products": [{"@id": "hub/library/nginx"}], "status": "not_affected", "timestamp": "2026-10-02T00:00:00Z"},
    {"vulnerability": {"name": "CVE-2024-0007"}, "products": [{"@id": "hub/library/nginx"}], "status": "affected", "timestamp": "2026-10-03T00:00:00Z",
     "action_statement": "upgrade to 1.27.3"},
    {"vulnerability": {"name": "CVE-2024-0008"}, "products": [{"@id": "pkg:deb/debian/zlib@1.3"}, {"@id": "https://vendor.example/products/app"},
     {"@id": "pkg:oci/nginx"}, {"@id": "registry.example/app:1.0"}], "status": "not_affected"},
    {"vulnerability": {"name": "CVE-2024-0011"}, "products": [{"@id": "hub/library/nginx"}], "status": "not_affected", "timestamp": "2026-10-05T00:00:00Z"},
    {"vulnerability": {"name": "CVE-2024-0012"}, "products": [{"@id": "hub/library/nginx"}], "status": "affected", "timestamp": "2026-10-05T00:00:00Z"},
    {"vulnerability": {"name": "CVE-2024-0013"}, "products": [{"identifiers": {"purl": "pkg:oci/nginx?repository_url=https://index.docker.io/nginx"}}], "status": "not_affected"},
    {"vulnerability": {"name": "CVE-2024-0014"}, "products": [{"@id": "pkg:oci/nginx?repository_url=hub/library/nginx"}], "status": "not_affected"},
    {"vulnerability": {"name": "CVE-2024-0015"}, "products": [{"@id": "pkg:oci/whatever@` + dA.String() + `"}], "status": "not_affected"},
    {"vulnerability": {"name": "CVE-2024-0016"}, "products": [{"@id": "hub/library/nginx@` + dB.String() + `"}], "status": "fixed"},
    {"vulnerability": {"name": "CVE-2024-0017"}, "products": [{"@id": "pkg:oci/app?repository_url=registry.local:5000/team/app"}], "status": "not_affected"}
  ]
}`

// legacyVEX uses the string forms of OpenVEX v0.0.x, and later says the
// opposite of vendorVEX about two vulnerabilities at the same time.
var legacyVEX = `{
  "@context": "https://openvex.dev/ns",
  "timestamp": "2026-09-01T00:00:00Z",
  "statements": [
    {"vulnerability": "CVE-2024-0009", "products": ["hub/library/nginx@` + dA.String() + `"],
     "subcomponents": ["pkg:golang/github.com/foo/bar@v1.2.0"], "status": "not_affected", "justification": "inline_mitigations_already_exist"},
    {"vulnerability": "CVE-2024-0011", "products": ["hub/library/nginx"], "status": "affected", "timestamp": "2026-10-05T00:00:00Z"},
    {"vulnerability": "CVE-2024-0012", "products": ["hub/library/nginx"], "status": "not_affected", "timestamp": "2026-10-05T00:00:00Z"}
  ]
}`

func TestVEXWaivers(t *testing.T) {
	t.Parallel()
	set := compile(t, []config.Policy{{Name: "p", Match: []string{"hub/*", "quay/*"}, Vulnerabilities: &config.Vulnerabilities{
		BlockSeverity: "high", VEX: []string{"/vex/vendor.json", "/vex/legacy.json"},
		Allow: []config.Waiver{{ID: "CVE-2024-0001", Until: "2027-01-31", Reason: "also waived here"}},
	}}}, map[string]string{"/vex/vendor.json": vendorVEX, "/vex/legacy.json": legacyVEX})
	nginx := Subject{Repository: "hub/library/nginx", Digest: dA}
	for _, tc := range []struct {
		name   string
		sub    Subject
		id     string
		pkg    string
		waived string // "source: reason", or "" when the finding stands
	}{
		{"digest, in its repository", nginx, "CVE-2024-0001", "openssl",
			"/vex/vendor.json: VEX: not_affected (vulnerable_code_not_in_execute_path)"},
		{"digest, in any repository", Subject{Repository: "hub/library/redis", Digest: dA}, "CVE-2024-0001", "openssl",
			"/vex/vendor.json: VEX: not_affected (vulnerable_code_not_in_execute_path)"},
		{"digest, another digest", Subject{Repository: "hub/library/nginx", Digest: dB}, "CVE-2024-0001", "openssl",
			"policy: also waived here"},
		{"repository, by alias", nginx, "CVE-2024-0002", "openssl", "/vex/vendor.json: VEX: fixed"},
		{"repository, by name", nginx, "GHSA-aaaa-bbbb-cccc", "openssl", "/vex/vendor.json: VEX: fixed"},
		{"repository, any digest", Subject{Repository: "hub/library/nginx", Digest: dC}, "cve-2024-0002", "openssl", "/vex/vendor.json: VEX: fixed"},
		{"repository, another repository", Subject{Repository: "hub/library/redis", Digest: dA}, "CVE-2024-0002", "openssl", ""},
		{"purl digest and repository_url", Subject{Repository: "hub/library/nginx", Digest: dB}, "CVE-2024-0003", "openssl",
			"/vex/vendor.json: VEX: not_affected (component_not_present): the module is not built"},
		{"purl digest in another repository", Subject{Repository: "hub/library/redis", Digest: dB}, "CVE-2024-0003", "openssl", ""},
		{"purl repository_url, another digest", nginx, "CVE-2024-0003", "openssl", ""},
		{"purl repository_url without digest", Subject{Repository: "quay/org/app", Digest: dC}, "CVE-2024-0004", "x", "/vex/vendor.json: VEX: not_affected"},
		{"purl repository_url: the host is not compared", Subject{Repository: "hub/org/app", Digest: dC}, "CVE-2024-0004", "x", "/vex/vendor.json: VEX: not_affected"},
		{"purl repository_url: another path", Subject{Repository: "quay/other/app", Digest: dC}, "CVE-2024-0004", "x", ""},
		{"purl repository_url: a subpath is another path", Subject{Repository: "quay/org/app/sub", Digest: dC}, "CVE-2024-0004", "x", ""},
		{"purl repository_url with a port", Subject{Repository: "quay/team/app", Digest: dC}, "CVE-2024-0017", "x", "/vex/vendor.json: VEX: not_affected"},
		{"purl repository_url: Docker Hub's short name", nginx, "CVE-2024-0013", "x", "/vex/vendor.json: VEX: not_affected"},
		{"purl repository_url in airlock's own terms", nginx, "CVE-2024-0014", "x", "/vex/vendor.json: VEX: not_affected"},
		{"purl repository_url in airlock's terms, elsewhere", Subject{Repository: "quay/library/nginx", Digest: dA}, "CVE-2024-0014", "x", ""},
		{"purl digest with a plain colon, any repository", Subject{Repository: "quay/x", Digest: dA}, "CVE-2024-0015", "x", "/vex/vendor.json: VEX: not_affected"},
		{"repository@digest", Subject{Repository: "hub/library/nginx", Digest: dB}, "CVE-2024-0016", "x", "/vex/vendor.json: VEX: fixed"},
		{"repository@digest, another digest", nginx, "CVE-2024-0016", "x", ""},
		{"under investigation waives nothing", nginx, "CVE-2024-0005", "x", ""},
		{"index digest holds for its platform", Subject{Repository: "hub/app", Digest: dC, Kind: KindPlatform, Indexes: []digest.Digest{dB, dIndex}},
			"CVE-2024-0006", "openssl", "/vex/vendor.json: VEX: not_affected: built without the affected engine"},
		{"index digest, a package it does not name", Subject{Repository: "hub/app", Digest: dC, Kind: KindPlatform, Indexes: []digest.Digest{dIndex}},
			"CVE-2024-0006", "libssl3", ""},
		{"index digest, a platform of another index", Subject{Repository: "hub/app", Digest: dC, Kind: KindPlatform, Indexes: []digest.Digest{dB}},
			"CVE-2024-0006", "openssl", ""},
		{"the latest statement counts", nginx, "CVE-2024-0007", "x", ""},
		{"products that are no image", nginx, "CVE-2024-0008", "zlib", ""},
		{"v0.0.x strings, subcomponent by module path", nginx, "CVE-2024-0009", "github.com/foo/bar",
			"/vex/legacy.json: VEX: not_affected (inline_mitigations_already_exist)"},
		{"v0.0.x strings, another package", nginx, "CVE-2024-0009", "github.com/foo/baz", ""},
		{"a tie goes to the later document: affected", nginx, "CVE-2024-0011", "x", ""},
		{"a tie goes to the later document: not affected", nginx, "CVE-2024-0012", "x", "/vex/legacy.json: VEX: not_affected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.sub.Scan = done(metadata.Finding{ID: tc.id, Package: tc.pkg, Installed: "1", Severity: "critical"})
			v := set.Evaluate(tc.sub, now)
			if tc.waived == "" {
				if v.State != metadata.StateQuarantined || len(v.Waived) != 0 {
					t.Errorf("%s stands: got %s, waived %+v", tc.id, v.State, v.Waived)
				}
				return
			}
			if v.State != metadata.StateApproved || len(v.Waived) != 1 {
				t.Fatalf("got %s %q, waived %+v; want waived by %s", v.State, messages(v.Reasons), v.Waived, tc.waived)
			}
			w := v.Waived[0]
			if got := w.Source + ": " + w.Reason; got != tc.waived || w.ID != tc.id || w.Package != tc.pkg || w.Policy != "p" || w.Severity != "critical" {
				t.Errorf("waived %+v, want by %s", w, tc.waived)
			}
			// A statement lasts as long as its document says: it sets no
			// end, and wins over an allow entry that has one.
			if w.Source != config.WaiverSourcePolicy && (!w.Until.IsZero() || !v.Recheck.IsZero()) {
				t.Errorf("VEX waiver until %v, recheck %v", w.Until, v.Recheck)
			}
		})
	}
}

func TestParseVEXErrors(t *testing.T) {
	t.Parallel()
	const ctx = `"@context": "https://openvex.dev/ns/v0.2.0", `
	st := func(s string) string { return "{" + ctx + `"statements": [` + s + "]}" }
	for _, tc := range []struct{ name, doc, want string }{
		{"syntax", "{\n  \"@context\": \"https://openvex.dev/ns/v0.2.0\",\n  \"statements\": [\n    {\"status\": not_affected}\n  ]\n}",
			"/v.json: line 4: not OpenVEX JSON: invalid character 'o' in literal null"},
		{"type", "{\n" + ctx + "\n\"statements\": {}}", "/v.json: line 3: not OpenVEX JSON: statements is a JSON object, where OpenVEX has a list"},
		{"empty file", "", "/v.json: line 1: not OpenVEX JSON: unexpected end of JSON input"},
		{"a product of the wrong type", st(`{"vulnerability": "CVE-1", "products": [7], "status": "fixed"}`),
			"/v.json: line 1: not OpenVEX JSON: statements.products is a JSON number, where OpenVEX has an object"},
		{"CycloneDX", `{"bomFormat": "CycloneDX", "vulnerabilities": []}`, `/v.json: not an OpenVEX document: its @context is ""`},
		{"another context", `{"@context": "https://docs.oasis-open.org/csaf"}`, `/v.json: not an OpenVEX document: its @context is "https://docs.oasis-open.org/csaf"`},
		{"document time", "{" + ctx + `"timestamp": "yesterday"}`, `/v.json: "yesterday" is not an RFC 3339 time`},
		{"no status", st(`{"vulnerability": {"name": "CVE-1"}, "products": ["sha256:` + strings.Repeat("a", 64) + `"]}`),
			"/v.json: statement 1 has no status; want not_affected, affected, fixed or under_investigation"},
		{"unknown status", st(`{"vulnerability": {"name": "CVE-1"}, "products": ["x/y"], "status": "not_affected"}, {"vulnerability": {"name": "CVE-1"}, "products": ["x/y"], "status": "not-affected"}`),
			`/v.json: statement 2: unknown status "not-affected"`},
		{"no vulnerability", st(`{"vulnerability": {"@id": "https://x"}, "products": ["x/y"], "status": "fixed"}`),
			"/v.json: statement 1 names no vulnerability"},
		{"no product", st(`{"vulnerability": "CVE-1", "status": "fixed"}`), "/v.json: statement 1 names no product"},
		{"statement time", st(`{"vulnerability": "CVE-1", "products": ["x/y"], "status": "fixed", "timestamp": "2026-10-01"}`),
			`/v.json: statement 1: "2026-10-01" is not an RFC 3339 time`},
		{"oci purl with a tag for version", st(`{"vulnerability": "CVE-1", "products": ["x/y", "pkg:oci/nginx@latest"], "status": "fixed"}`),
			`/v.json: statement 1: product 2: "pkg:oci/nginx@latest": the version of a pkg:oci purl is the manifest digest`},
		{"oci purl without a name", st(`{"vulnerability": "CVE-1", "products": ["pkg:oci/@sha256%3A` + strings.Repeat("a", 64) + `"], "status": "fixed"}`),
			"a pkg:oci purl needs a name"},
		{"purl qualifiers", st(`{"vulnerability": "CVE-1", "products": ["pkg:oci/n?repository_url=%zz"], "status": "fixed"}`),
			"its qualifiers do not parse"},
		{"repository with a bad digest", st(`{"vulnerability": "CVE-1", "products": ["hub/x@sha256:zz"], "status": "fixed"}`),
			`/v.json: statement 1: product 1: "hub/x@sha256:zz": "sha256:zz" is not a digest`},
		{"digest without repository", st(`{"vulnerability": "CVE-1", "products": ["nginx@` + dA.String() + `"], "status": "fixed"}`),
			"want <upstream>/<repository>@<digest>"},
	} {
		_, err := ParseVEX("/v.json", []byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "/v.json: ") {
			t.Errorf("%s: ParseVEX = %v, want %q", tc.name, err, tc.want)
		}
	}
	// An empty document says nothing, which is no error.
	if x, err := ParseVEX("/v.json", []byte("{"+ctx+`"statements": []}`)); err != nil || len(x.statements) != 0 {
		t.Errorf("empty document: %v, %v", x, err)
	}
}

func TestParseVEXForms(t *testing.T) {
	t.Parallel()
	x, err := ParseVEX("/vendor.json", []byte(vendorVEX))
	if err != nil {
		t.Fatal(err)
	}
	if len(x.statements) != 16 || x.Path != "/vendor.json" {
		t.Fatalf("%d statements from %s", len(x.statements), x.Path)
	}
	s := x.statements[1]
	if strings.Join(s.ids, ",") != "GHSA-AAAA-BBBB-CCCC,CVE-2024-0002" || s.status != StatusFixed || !s.at.Equal(time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("statement 2 = %+v", s)
	}
	if s := x.statements[6]; !s.at.Equal(time.Date(2026, 10, 2, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("a statement's own timestamp is not used: %v", s.at)
	}
	if s := x.statements[8]; len(s.products) != 0 {
		t.Errorf("products that name no image were kept: %+v", s.products)
	}
	for _, tc := range []struct {
		id   string
		want vexProduct
	}{
		{dA.String(), vexProduct{digest: dA}},
		{"Hub/Library/Nginx", vexProduct{repo: "hub/library/nginx"}},
		{"hub/library/nginx@" + dB.String(), vexProduct{repo: "hub/library/nginx", digest: dB}},
		{"pkg:oci/nginx@sha256%3A" + dB.Encoded() + "?arch=amd64&repository_url=docker.io%2Flibrary%2Fnginx", vexProduct{digest: dB, repo: "docker.io/library/nginx", path: "library/nginx"}},
		{"pkg:oci/static@" + url.PathEscape(dB.String()) + "?repository_url=gcr.io/distroless/static&tag=latest", vexProduct{digest: dB, repo: "gcr.io/distroless/static", path: "distroless/static"}},
		{"pkg:oci/app?repository_url=oci://localhost/team/app/", vexProduct{repo: "localhost/team/app", path: "team/app"}},
		{"pkg:oci/app?repository_url=quay/team/app", vexProduct{repo: "quay/team/app"}},
		{"pkg:OCI/hello-wasm@sha256:" + dC.Encoded(), vexProduct{digest: dC}},
	} {
		p, ok, err := parseProduct(tc.id)
		if err != nil || !ok || p.digest != tc.want.digest || p.repo != tc.want.repo || p.path != tc.want.path {
			t.Errorf("parseProduct(%q) = %+v, %v, %v; want %+v", tc.id, p, ok, err, tc.want)
		}
	}
	for _, id := range []string{"pkg:oci/nginx", "pkg:deb/debian/openssl@3", "https://example.com/app", "registry.example/app:1.0", "nginx", "", "pkg:oci/nginx?tag=latest"} {
		if p, ok, err := parseProduct(id); ok || err != nil {
			t.Errorf("parseProduct(%q) = %+v, %v, %v; want no image and no error", id, p, ok, err)
		}
	}
	for id, want := range map[string]string{
		"pkg:deb/debian/openssl@3.0.11-1?arch=amd64":           "debian/openssl openssl debian:openssl",
		"pkg:golang/github.com/foo/bar@v1.2.0":                 "github.com/foo/bar bar github.com/foo:bar",
		"pkg:npm/%40scope/pkg@1.0.0":                           "@scope/pkg pkg @scope:pkg",
		"pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1": "org.apache.logging.log4j/log4j-core log4j-core org.apache.logging.log4j:log4j-core",
		"pkg:pypi/requests@2.31.0":                             "requests",
		"openssl":                                              "openssl",
	} {
		if got := strings.Join(packageNames(id), " "); got != want {
			t.Errorf("packageNames(%q) = %q, want %q", id, got, want)
		}
	}
}

func ExampleParseVEX() {
	doc := `{
  "@context": "https://openvex.dev/ns/v0.2.0",
  "statements": [{
    "vulnerability": {"name": "CVE-2024-5535"},
    "products": [{"@id": "pkg:oci/nginx?repository_url=docker.io/library/nginx"}],
    "status": "not_affected",
    "justification": "vulnerable_code_not_in_execute_path"
  }]
}`
	x, err := ParseVEX("nginx.openvex.json", []byte(doc))
	fmt.Println(len(x.statements), err)
	// Output: 1 <nil>
}

// FuzzParseVEX: whatever a document holds, parsing it ends in a document
// or in an error that names the file, and matching never panics.
func FuzzParseVEX(f *testing.F) {
	for _, seed := range []string{vendorVEX, legacyVEX, "", "{}", `{"@context": "https://openvex.dev/ns/v0.2.0", "statements": [{"vulnerability": "CVE-1", "products": ["pkg:oci/%zz@%zz?repository_url=%2F%2F"], "status": "fixed"}]}`,
		`{"@context": "https://openvex.dev/ns", "statements": [{"vulnerability": {"name": "CVE-1"}, "products": [{"@id": "pkg:oci/a?repository_url=docker.io"}, "pkg:/", "pkg:", "@", "a/b@"], "status": "fixed"}]}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := ParseVEX("/f.json", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "/f.json: ") {
				t.Errorf("error %q does not name the file", err)
			}
			return
		}
		v := &vulnCheck{block: "low", unknown: "medium", vex: []*VEX{x}}
		for _, sub := range []Subject{{Repository: "hub/library/nginx", Digest: dA}, {Repository: "x", Digest: "", Indexes: []digest.Digest{dB}}} {
			v.vexFor(&metadata.Finding{ID: "CVE-1", Package: "a"}, &sub)
		}
	})
}
