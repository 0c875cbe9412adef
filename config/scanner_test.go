package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// scannerBase is a valid document with two upstreams; each case appends a
// scanner section, policies, or both.
const scannerBase = `upstreams:
  - {name: hub, url: "https://registry-1.docker.io", aliases: [docker.io]}
  - {name: quay, url: "https://quay.io"}
`

func TestScannerDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse("s.yaml", []byte(scannerBase+"scanner: {database: \"postgres://airlock@127.0.0.1/airlock\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Scanner
	if !s.Enabled() || s.Concurrency != 2 || s.Attempts != 5 || s.Timeout.Std() != 30*time.Minute || s.Updaters.Interval.Std() != 6*time.Hour {
		t.Errorf("defaults not applied: %+v", s)
	}
	if len(s.Updaters.Sets) != 0 || s.WorkDir != "" {
		t.Errorf("scanner gained values nobody wrote: %+v", s)
	}
	// Off, the section stays empty: nothing claims a setting that is not
	// in force.
	off, err := Parse("s.yaml", []byte(scannerBase))
	if err != nil {
		t.Fatal(err)
	}
	if off.Scanner.Enabled() || off.Scanner.Concurrency != 0 || off.Scanner.Timeout != 0 {
		t.Errorf("scanning off, yet %+v", off.Scanner)
	}
	if d := Default(); d.Scanner.Enabled() {
		t.Error("the embedded default scans; it must run without a database")
	}
	kept, err := Parse("s.yaml", []byte(scannerBase+"scanner: {databaseFile: /dsn, concurrency: 8, attempts: 1, timeout: 5m, updaters: {interval: 1h}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := kept.Scanner; s.Concurrency != 8 || s.Attempts != 1 || s.Timeout.Std() != 5*time.Minute || s.Updaters.Interval.Std() != time.Hour {
		t.Errorf("explicit values lost: %+v", s)
	}
}

func TestScannerValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		errs       []string // each must appear in the error, with the line
	}{
		{"url dsn", "scanner: {database: \"postgresql://airlock:pw@db:5432/airlock?sslmode=disable\"}", nil},
		{"key=value dsn", "scanner: {database: \"host=db user=airlock password='a b' dbname=airlock\"}", nil},
		{"file dsn", "scanner: {databaseFile: /run/secrets/dsn}", nil},
		{"every set", "scanner: {database: \"postgres://db/a\", updaters: {sets: [alpine, aws, clair.cvss, debian, oracle, osv, photon, rhel-vex, suse, ubuntu]}}", nil},
		{"no sets is import only", "scanner: {database: \"postgres://db/a\", updaters: {sets: []}}", nil},
		{"rhel both", "scanner: {database: \"postgres://db/a\", rhel: {repo2cpe: /r.json, name2repos: /n.json}}", nil},
		{"updater config", "scanner:\n  database: \"postgres://db/a\"\n  updaters:\n    config:\n      osv: {url: \"http://127.0.0.1:9/\"}\n", nil},

		{"both databases", "scanner:\n  database: \"postgres://db/a\"\n  databaseFile: /dsn\n",
			[]string{"s.yaml:4: scanner: database and databaseFile are both set; set one"}},
		{"dsn scheme", "scanner: {database: \"mysql://u:secret@db/a\"}",
			[]string{`s.yaml:4: scanner.database: the scheme is "mysql"; write a postgres:// URL`}},
		{"dsn not a dsn", "scanner: {database: \"db.example\"}",
			[]string{"s.yaml:4: scanner.database: is neither a postgres:// URL nor key=value pairs"}},
		{"negative numbers", "scanner:\n  database: \"postgres://db/a\"\n  concurrency: -1\n  attempts: -3\n",
			[]string{"s.yaml:6: scanner.concurrency: -1 is negative", "s.yaml:7: scanner.attempts: -3 is negative"}},
		{"negative durations", "scanner:\n  database: \"postgres://db/a\"\n  timeout: -1m\n  updaters: {interval: -1h}\n",
			[]string{"s.yaml:6: scanner.timeout: -1m0s is negative", "s.yaml:7: scanner.updaters.interval: -1h0m0s is negative"}},
		{"unknown set", "scanner:\n  database: \"postgres://db/a\"\n  updaters:\n    sets: [debian, Alpine, nvd]\n",
			[]string{
				`s.yaml:7: scanner.updaters.sets[1]: unknown updater set "Alpine"; the sets are alpine, aws, clair.cvss, debian, oracle, osv, photon, rhel-vex, suse, ubuntu`,
				`scanner.updaters.sets[2]: unknown updater set "nvd"`,
			}},
		{"set twice", "scanner:\n  database: \"postgres://db/a\"\n  updaters:\n    sets: [osv, osv]\n",
			[]string{`s.yaml:7: scanner.updaters.sets[1]: "osv" is listed twice`}},
		{"rhel half", "scanner:\n  database: \"postgres://db/a\"\n  rhel: {repo2cpe: /r.json}\n",
			[]string{"s.yaml:6: scanner.rhel: repo2cpe and name2repos must be set together"}},
		{"keys without a database", "scanner:\n  updaters: {sets: [debian]}\n  concurrency: 4\n  workDir: /scan\n",
			[]string{"s.yaml:4: scanner: sets updaters.sets, concurrency, workDir, but scanning is off without a database; set scanner.database to a PostgreSQL DSN (see README)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("s.yaml", []byte(scannerBase+tc.yaml+"\n"))
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.errs)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error:\n%v\nlacks:\n%s", err, want)
				}
			}
			if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != len(tc.errs) {
				t.Errorf("%d problems, want %d:\n%v", n, len(tc.errs), err)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("the error quotes the connection string's password: %v", err)
			}
		})
	}
}

func TestVulnerabilityPolicies(t *testing.T) {
	t.Parallel()
	const scan = "scanner: {database: \"postgres://db/a\"}\n"
	pol := func(vulns string) string {
		return "policies:\n  - name: no-high\n    match: [\"hub/*\"]\n    vulnerabilities:\n" + vulns
	}
	waiver := func(extra string) string {
		return pol("      blockSeverity: high\n      allow:\n        - id: CVE-2024-5535\n          until: \"2027-01-31\"\n          reason: unreachable\n" + extra)
	}
	for _, tc := range []struct {
		name, yaml string
		errs       []string
	}{
		{"only vulnerabilities", scan + pol("      blockSeverity: high\n"), nil},
		{"every severity", scan + "policies:\n" +
			"  - {name: a, match: [hub/library/a], vulnerabilities: {blockSeverity: negligible, unknownSeverity: critical}}\n" +
			"  - {name: b, match: [hub/library/b], vulnerabilities: {blockSeverity: low, unknownSeverity: negligible}}\n" +
			"  - {name: c, match: [hub/library/c], vulnerabilities: {blockSeverity: medium, unknownSeverity: low, unscanned: allow}}\n" +
			"  - {name: d, match: [hub/library/d], vulnerabilities: {blockSeverity: critical, unknownSeverity: high, unscanned: deny}}\n", nil},
		{"waiver with date", scan + waiver(""), nil},
		{"waiver with time and repositories", scan + pol("      blockSeverity: high\n      allow:\n        - {id: GHSA-xxxx-yyyy-zzzz, until: \"2027-01-31T18:00:00+02:00\", reason: r, repositories: [\"hub/library/*\", quay/x]}\n        - {id: \"RHSA-2024:1234\", until: \"2026-12-01\", reason: r}\n"), nil},
		{"with pins and vex", scan + pol("      blockSeverity: critical\n      vex: [/v.json]\n") + "    pins: /p\n", nil},

		{"no scanner", pol("      blockSeverity: high\n"),
			[]string{"s.yaml:7: policies[0].vulnerabilities: needs the scanner, which is off; set scanner.database to a PostgreSQL DSN; see README"}},
		{"block severity missing", scan + pol("      ignoreUnfixed: true\n"),
			[]string{"s.yaml:8: policies[0].vulnerabilities.blockSeverity: required; the least severity that quarantines an image: negligible, low, medium, high, critical"}},
		{"block severity unknown", scan + pol("      blockSeverity: High\n"),
			[]string{`s.yaml:9: policies[0].vulnerabilities.blockSeverity: unknown severity "High"; use negligible, low, medium, high, critical`}},
		{"block severity unknown is not a level", scan + pol("      blockSeverity: unknown\n"),
			[]string{`policies[0].vulnerabilities.blockSeverity: unknown severity "unknown"`}},
		{"unknown severity", scan + pol("      blockSeverity: high\n      unknownSeverity: severe\n"),
			[]string{`s.yaml:10: policies[0].vulnerabilities.unknownSeverity: unknown severity "severe"`}},
		{"unscanned", scan + pol("      blockSeverity: high\n      unscanned: wait\n"),
			[]string{`s.yaml:10: policies[0].vulnerabilities.unscanned: unknown value "wait"; use deny`}},
		{"waiver without id, until, reason", scan + pol("      blockSeverity: high\n      allow:\n        - repositories: [hub/library/x]\n"),
			[]string{"s.yaml:11: policies[0].vulnerabilities.allow[0].id: required", "s.yaml:11: policies[0].vulnerabilities.allow[0].until: required", "s.yaml:11: policies[0].vulnerabilities.allow[0].reason: required"}},
		{"waiver id with a space", scan + pol("      blockSeverity: high\n      allow:\n        - {id: \"CVE-2024-1 CVE-2024-2\", until: \"2027-01-31\", reason: r}\n"),
			[]string{`s.yaml:11: policies[0].vulnerabilities.allow[0].id: "CVE-2024-1 CVE-2024-2" is not one advisory id`}},
		{"waiver id with a comma", scan + pol("      blockSeverity: high\n      allow:\n        - {id: \"CVE-2024-1,CVE-2024-2\", until: \"2027-01-31\", reason: r}\n"),
			[]string{`policies[0].vulnerabilities.allow[0].id: "CVE-2024-1,CVE-2024-2" is not one advisory id`}},
		{"waiver id with a tab", scan + pol("      blockSeverity: high\n      allow:\n        - {id: \"CVE-2024-1\\t\", until: \"2027-01-31\", reason: r}\n"),
			[]string{`policies[0].vulnerabilities.allow[0].id: "CVE-2024-1\t" is not one advisory id`}},
		{"waiver reason blank", scan + pol("      blockSeverity: high\n      allow:\n        - {id: CVE-2024-1, until: \"2027-01-31\", reason: \"  \"}\n"),
			[]string{"policies[0].vulnerabilities.allow[0].reason: required"}},
		{"until not a date", scan + pol("      blockSeverity: high\n      allow:\n        - {id: CVE-2024-1, until: \"31.01.2027\", reason: r}\n"),
			[]string{`s.yaml:11: policies[0].vulnerabilities.allow[0].until: "31.01.2027" is neither a date (YYYY-MM-DD`}},
		{"until without zone", scan + pol("      blockSeverity: high\n      allow:\n        - {id: CVE-2024-1, until: \"2027-01-31T10:00:00\", reason: r}\n"),
			[]string{`policies[0].vulnerabilities.allow[0].until: "2027-01-31T10:00:00" is neither`}},
		{"until impossible day", scan + pol("      blockSeverity: high\n      allow:\n        - {id: CVE-2024-1, until: \"2027-02-30\", reason: r}\n"),
			[]string{`policies[0].vulnerabilities.allow[0].until: "2027-02-30" is neither`}},
		{"waiver repositories", scan + waiver("          repositories: [\"hub/x:1\", \"nope/*\", \"Hub/x\", hub]\n"),
			[]string{
				`s.yaml:14: policies[0].vulnerabilities.allow[0].repositories[0]: "hub/x:1" contains a space, '@' or ':'`,
				`policies[0].vulnerabilities.allow[0].repositories[1]: "nope/*" matches no repository: "nope" is not an upstream name`,
				`policies[0].vulnerabilities.allow[0].repositories[2]: "Hub/x" has uppercase letters`,
				`policies[0].vulnerabilities.allow[0].repositories[3]: "hub" names no repository`,
			}},
		{"waiver repositories on docker hub", scan + waiver("          repositories: [hub/nginx]\n"),
			[]string{`policies[0].vulnerabilities.allow[0].repositories[0]: "hub/nginx" matches no repository: upstream hub serves Docker Hub, where nginx is hub/library/nginx`}},
		{"waiver repositories empty", scan + waiver("          repositories: []\n"),
			[]string{"policies[0].vulnerabilities.allow[0].repositories: an empty list waives nothing"}},
		{"vex empty path", scan + pol("      blockSeverity: high\n      vex: [\"\"]\n"),
			[]string{"s.yaml:10: policies[0].vulnerabilities.vex[0]: empty path"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse("s.yaml", []byte(scannerBase+tc.yaml))
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range c.Policies {
					v := p.Vulnerabilities
					if !slices.Contains(Severities(), v.UnknownSeverity) || (v.Unscanned != UnscannedDeny && v.Unscanned != UnscannedAllow) {
						t.Errorf("defaults not applied: %+v", v)
					}
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.errs)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error:\n%v\nlacks:\n%s", err, want)
				}
			}
			if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != len(tc.errs) {
				t.Errorf("%d problems, want %d:\n%v", n, len(tc.errs), err)
			}
		})
	}
}

func TestVulnerabilityDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse("v.yaml", []byte(scannerBase+"scanner: {database: \"postgres://db/a\"}\npolicies: [{name: v, match: [\"hub/*\"], vulnerabilities: {blockSeverity: high}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	v := c.Policies[0].Vulnerabilities
	if v.UnknownSeverity != "medium" || v.Unscanned != "deny" || v.IgnoreUnfixed || c.Policies[0].Mode != ModeEnforce {
		t.Errorf("defaults = %+v", v)
	}
}

func TestWaiverEnds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		until string
		want  time.Time
		err   string
	}{
		// A date counts through its last second, UTC.
		{until: "2027-01-31", want: time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)},
		{until: "2028-02-28", want: time.Date(2028, 2, 29, 0, 0, 0, 0, time.UTC)},
		{until: "2026-12-31", want: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)},
		// A time ends where it says.
		{until: "2027-01-31T18:00:00Z", want: time.Date(2027, 1, 31, 18, 0, 0, 0, time.UTC)},
		{until: "2027-01-31T18:00:00+02:00", want: time.Date(2027, 1, 31, 16, 0, 0, 0, time.UTC)},
		{until: "", err: `"" is neither`},
		{until: "tomorrow", err: `"tomorrow" is neither`},
		{until: "2027-01-31 18:00", err: "is neither"},
	} {
		got, err := Waiver{Until: tc.until}.Ends()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Ends(%q) = %v, %v; want error %q", tc.until, got, err, tc.err)
			}
			continue
		}
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("Ends(%q) = %v, %v; want %v", tc.until, got, err, tc.want)
		}
	}
}

func TestScannerHost(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, data string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	dsn := write("dsn", "postgres://airlock:pw@127.0.0.1/airlock\n")
	empty := write("empty", "")
	vex := write("vex.json", "{}")
	notDir := write("file", "x")
	absent := filepath.Join(dir, "absent")
	doc := func(scanner, vexFile string) string {
		return fmt.Sprintf(`storage: {path: %q}
upstreams: [{name: hub, url: "https://hub.example"}]
scanner: %s
policies: [{name: v, match: ["hub/*"], vulnerabilities: {blockSeverity: high, vex: [%q]}}]
`, filepath.Join(dir, "data"), scanner, vexFile)
	}
	for _, tc := range []struct {
		name, yaml string
		errs       []string
	}{
		{"all there", doc(fmt.Sprintf("{databaseFile: %q, workDir: %q, rhel: {repo2cpe: %q, name2repos: %q}}", dsn, filepath.Join(dir, "scan"), vex, vex), vex), nil},
		{"dsn file missing", doc(fmt.Sprintf("{databaseFile: %q}", absent), vex),
			[]string{"c.yaml:3: scanner.databaseFile: " + absent + " does not exist"}},
		{"dsn file empty", doc(fmt.Sprintf("{databaseFile: %q}", empty), vex),
			[]string{"c.yaml:3: scanner.databaseFile: " + empty + " is empty"}},
		{"rhel files missing", doc(fmt.Sprintf("{database: \"postgres://db/a\", rhel: {repo2cpe: %q, name2repos: %q}}", absent, dir), vex),
			[]string{"c.yaml:3: scanner.rhel.repo2cpe: " + absent + " does not exist", "c.yaml:3: scanner.rhel.name2repos: " + dir + " is a directory"}},
		{"work dir under a file", doc(fmt.Sprintf("{database: \"postgres://db/a\", workDir: %q}", filepath.Join(notDir, "scan")), vex),
			[]string{"c.yaml:3: scanner.workDir: cannot create " + filepath.Join(notDir, "scan") + ": " + notDir + " is a file"}},
		{"vex missing", doc("{database: \"postgres://db/a\"}", absent),
			[]string{"c.yaml:4: policies[0].vulnerabilities.vex[0]: " + absent + " does not exist"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(path, ScopeDocument); err != nil {
				t.Fatalf("ScopeDocument: %v", err)
			}
			_, err := Open(path, ScopeHost)
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.errs)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), path+":"+strings.TrimPrefix(want, "c.yaml:")) {
					t.Errorf("error:\n%v\nlacks:\n%s", err, want)
				}
			}
			if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != len(tc.errs) {
				t.Errorf("%d problems, want %d:\n%v", n, len(tc.errs), err)
			}
		})
	}
}

func TestScannerDSN(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, data string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name string
		s    Scanner
		want string
		err  string
	}{
		{"inline", Scanner{Database: "host=db dbname=a"}, "host=db dbname=a", ""},
		{"file, first line", Scanner{DatabaseFile: write("dsn", "postgres://u:pw@db/a\r\n# rotated 2026-11-30\n")}, "postgres://u:pw@db/a", ""},
		{"file without newline", Scanner{DatabaseFile: write("dsn2", "postgres://db/a")}, "postgres://db/a", ""},
		{"none", Scanner{}, "", "no database configured"},
		{"file missing", Scanner{DatabaseFile: filepath.Join(dir, "absent")}, "", "absent does not exist"},
		{"first line empty", Scanner{DatabaseFile: write("blank", "\npostgres://u:pw@db/a\n")}, "", "first line of " + filepath.Join(dir, "blank") + " is empty"},
		{"too large", Scanner{DatabaseFile: write("big", strings.Repeat("x", maxSecretBytes+1))}, "", "is larger than"},
	} {
		got, err := tc.s.DSN()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "pw@") {
				t.Errorf("%s: DSN() = %q, %v; want an error with %q that does not quote the file", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: DSN() = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestScannerDiff(t *testing.T) {
	t.Parallel()
	a, err := Parse("a.yaml", []byte(scannerBase+"scanner: {database: \"postgres://db/a\", updaters: {sets: [debian]}}\npolicies: [{name: v, match: [\"hub/*\"], vulnerabilities: {blockSeverity: high}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("b.yaml", []byte(scannerBase+"scanner: {database: \"postgres://db/a\", updaters: {sets: [ubuntu]}, concurrency: 4}\npolicies: [{name: v, match: [\"hub/*\"], vulnerabilities: {blockSeverity: critical, allow: [{id: CVE-2024-1, until: \"2027-01-01\", reason: r}]}}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	// A reload names scanner keys among those needing a restart, and
	// applies the policies' (see reloadable in cmd/airlock). A section
	// behind a pointer differs as a whole.
	want := []string{"policies[0].vulnerabilities", "scanner.updaters.sets[0]", "scanner.concurrency"}
	if got := Diff(a, b); !slices.Equal(got, want) {
		t.Errorf("Diff = %q, want %q", got, want)
	}
}
