package config

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Scanner configures vulnerability scanning. It is off unless Database
// or DatabaseFile is set, and then every other key must be left out: a
// scanner section without a database would be a setting that does
// nothing. It is read at start only; a change needs a restart.
type Scanner struct {
	// Database is the PostgreSQL connection string (a URL or key=value
	// DSN) of claircore's indexer and matcher store and of the scan
	// queue. Prefer DatabaseFile for a DSN with a password.
	Database string `yaml:"database"`
	// DatabaseFile is a file holding the connection string on its first
	// line. Exclusive with Database.
	DatabaseFile string `yaml:"databaseFile"`
	// Updaters fetch vulnerability data.
	Updaters Updaters `yaml:"updaters"`
	// Concurrency is how many manifests are scanned at once by this
	// process. 0 or absent means 2.
	Concurrency int `yaml:"concurrency"`
	// Attempts is how many times a failing scan is tried before it is
	// recorded as failed. 0 or absent means 5.
	Attempts int `yaml:"attempts"`
	// Timeout bounds one scan (fetching missing layers, indexing,
	// matching). 0 or absent means 30m.
	Timeout Duration `yaml:"timeout"`
	// WorkDir holds the uncompressed layers being indexed. Default: a
	// "scan" directory beside the blob store's files, else the system's
	// temporary directory.
	WorkDir string `yaml:"workDir"`
	// RHEL maps Red Hat repositories to CPEs for images that carry no
	// content manifests. Both files are read from disk: airlock's
	// indexer makes no network requests. Default: none (RHEL images
	// without content manifests match no repository-scoped advisories).
	RHEL RHELMapping `yaml:"rhel"`
}

// RHELMapping names the local copies of Red Hat's mapping files.
type RHELMapping struct {
	// Repo2CPE is repository-to-cpe.json.
	Repo2CPE string `yaml:"repo2cpe"`
	// Name2Repos is container-name-repos-map.json.
	Name2Repos string `yaml:"name2repos"`
}

// Updaters configure claircore's updaters.
type Updaters struct {
	// Sets are the updater sets to run, among [UpdaterSets] (debian,
	// ubuntu, alpine, rhel-vex, osv, ...). Empty or absent: none, and
	// vulnerability data comes only from `airlock vulndb import`.
	Sets []string `yaml:"sets"`
	// Config holds per-updater settings keyed by updater or factory name,
	// as Clair's updaters.config (feed URLs for mirrors).
	Config map[string]yaml.Node `yaml:"config"`
	// Interval is how often the updaters run. 0 or absent means 6h.
	Interval Duration `yaml:"interval"`
}

// Unscanned settings: what a pull gets while an image's first scan runs.
const (
	UnscannedDeny  = "deny"
	UnscannedAllow = "allow"
)

// Vulnerabilities is a policy's vulnerability check.
type Vulnerabilities struct {
	// BlockSeverity quarantines an image with any finding at or above it:
	// negligible, low, medium, high or critical. Required.
	BlockSeverity string `yaml:"blockSeverity"`
	// UnknownSeverity is the severity a finding its source did not rate
	// counts as (Alpine rates none). Default medium.
	UnknownSeverity string `yaml:"unknownSeverity"`
	// IgnoreUnfixed leaves out findings with no fixed version.
	IgnoreUnfixed bool `yaml:"ignoreUnfixed"`
	// Allow are waivers: findings that do not count, each with a reason
	// and an end.
	Allow []Waiver `yaml:"allow"`
	// VEX are OpenVEX documents whose not_affected and fixed statements
	// waive findings for the products they name. Re-read on SIGHUP.
	VEX []string `yaml:"vex"`
	// Unscanned is what a pull gets while the image's first scan runs:
	// deny (refused, retry later) or allow (served, and quarantined
	// afterwards if the scan finds what the policy refuses). Default
	// deny.
	Unscanned string `yaml:"unscanned"`
}

// Waiver lets one vulnerability through until a date.
type Waiver struct {
	// ID is the CVE or advisory id. Required.
	ID string `yaml:"id"`
	// Repositories are globs over <upstream>/<repository> the waiver is
	// limited to; empty: every repository the policy matches.
	Repositories []string `yaml:"repositories"`
	// Until is the last day the waiver counts (YYYY-MM-DD, through the
	// end of that day UTC) or an RFC 3339 time it ends at. Required.
	Until string `yaml:"until"`
	// Reason says why the finding is accepted. Required.
	Reason string `yaml:"reason"`
}

// Defaults of Scanner, filled in when scanning is on.
const (
	DefaultScanConcurrency = 2
	DefaultScanAttempts    = 5
	DefaultScanTimeout     = Duration(30 * time.Minute)
	DefaultUpdateInterval  = Duration(6 * time.Hour)
)

// Enabled reports whether scanning is on: a database is configured.
func (s *Scanner) Enabled() bool { return s.Database != "" || s.DatabaseFile != "" }

// DSN returns the database connection string: Database, or the first
// line of DatabaseFile, read on each call so that a rotated Secret is used
// at the next connection. Errors name the file, never its content.
func (s *Scanner) DSN() (string, error) {
	if s.DatabaseFile == "" {
		if s.Database == "" {
			return "", fmt.Errorf("scanner: no database configured; set scanner.database or scanner.databaseFile")
		}
		return s.Database, nil
	}
	f, err := os.Open(s.DatabaseFile)
	if err != nil {
		return "", fmt.Errorf("scanner.databaseFile: %s", fileProblem(s.DatabaseFile, err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return "", fmt.Errorf("scanner.databaseFile: reading %s: %w", s.DatabaseFile, err)
	}
	if len(data) > maxSecretBytes {
		return "", fmt.Errorf("scanner.databaseFile: %s is larger than %d bytes; check that the path names the file holding the connection string", s.DatabaseFile, maxSecretBytes)
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	dsn := strings.TrimSpace(string(line))
	if dsn == "" {
		return "", fmt.Errorf("scanner.databaseFile: the first line of %s is empty; write the PostgreSQL connection string on it", s.DatabaseFile)
	}
	return dsn, nil
}

// UpdaterSets returns the updater sets airlock's scanner can run: those
// claircore v1.6.0's updater/defaults registers. clair.cvss is an
// enricher: it adds CVSS scores to the other sets' advisories.
func UpdaterSets() []string {
	return []string{"alpine", "aws", "clair.cvss", "debian", "oracle", "osv", "photon", "rhel-vex", "suse", "ubuntu"}
}

func (s *Scanner) applyDefaults() {
	if !s.Enabled() {
		return
	}
	setDefault(&s.Concurrency, DefaultScanConcurrency)
	setDefault(&s.Attempts, DefaultScanAttempts)
	setDefault(&s.Timeout, DefaultScanTimeout)
	setDefault(&s.Updaters.Interval, DefaultUpdateInterval)
}

func (s *Scanner) check(p *problems) {
	if !s.Enabled() {
		if set := s.setKeys(); len(set) > 0 {
			p.add("scanner", "sets %s, but scanning is off without a database; set scanner.database to a PostgreSQL DSN (see README), or remove the scanner section",
				strings.Join(set, ", "))
		}
		return
	}
	if s.Database != "" && s.DatabaseFile != "" {
		p.add("scanner", "database and databaseFile are both set; set one (databaseFile for a connection string with a password)")
	}
	if s.Database != "" {
		checkDSN(p, "scanner.database", s.Database)
	}
	for key, n := range map[string]int{"scanner.concurrency": s.Concurrency, "scanner.attempts": s.Attempts} {
		if n < 0 {
			p.add(key, "%d is negative; set a positive number, or leave it out for the default", n)
		}
	}
	p.duration("scanner.timeout", s.Timeout)
	p.duration("scanner.updaters.interval", s.Updaters.Interval)
	known := UpdaterSets()
	seen := map[string]bool{}
	for i, set := range s.Updaters.Sets {
		key := fmt.Sprintf("scanner.updaters.sets[%d]", i)
		switch {
		case !slices.Contains(known, set):
			p.add(key, "unknown updater set %q; the sets are %s", set, strings.Join(known, ", "))
		case seen[set]:
			p.add(key, "%q is listed twice; list each set once", set)
		}
		seen[set] = true
	}
	if (s.RHEL.Repo2CPE == "") != (s.RHEL.Name2Repos == "") {
		p.add("scanner.rhel", "repo2cpe and name2repos must be set together; set both (local copies of repository-to-cpe.json and container-name-repos-map.json), or neither")
	}
}

// setKeys lists the keys of a scanner section that is off which are set
// all the same.
func (s *Scanner) setKeys() []string {
	var out []string
	for _, k := range []struct {
		key string
		set bool
	}{
		{"updaters.sets", len(s.Updaters.Sets) > 0},
		{"updaters.config", len(s.Updaters.Config) > 0},
		{"updaters.interval", s.Updaters.Interval != 0},
		{"concurrency", s.Concurrency != 0},
		{"attempts", s.Attempts != 0},
		{"timeout", s.Timeout != 0},
		{"workDir", s.WorkDir != ""},
		{"rhel", s.RHEL != RHELMapping{}},
	} {
		if k.set {
			out = append(out, k.key)
		}
	}
	return out
}

// checkDSN checks the form of a connection string: a postgres:// or
// postgresql:// URL, or key=value pairs. Its messages never quote it: it
// may hold a password.
func checkDSN(p *problems, key, dsn string) {
	if scheme, _, ok := strings.Cut(dsn, "://"); ok {
		if scheme != "postgres" && scheme != "postgresql" {
			p.add(key, "the scheme is %q; write a postgres:// URL or key=value pairs (host=... dbname=...)", scheme)
		}
		return
	}
	if !strings.Contains(dsn, "=") {
		p.add(key, "is neither a postgres:// URL nor key=value pairs (host=db user=airlock dbname=airlock)")
	}
}

// checkHost checks the files and directory the scanner reads or writes.
func (s *Scanner) checkHost(p *problems) {
	if !s.Enabled() {
		return
	}
	if s.DatabaseFile != "" {
		p.secretFile("scanner.databaseFile", s.DatabaseFile)
	}
	if s.RHEL.Repo2CPE != "" {
		p.readable("scanner.rhel.repo2cpe", s.RHEL.Repo2CPE)
	}
	if s.RHEL.Name2Repos != "" {
		p.readable("scanner.rhel.name2repos", s.RHEL.Name2Repos)
	}
	if s.WorkDir != "" {
		p.writableDir("scanner.workDir", s.WorkDir)
	}
}
