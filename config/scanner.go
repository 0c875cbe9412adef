package config

import "go.yaml.in/yaml/v3"

// Scanner configures vulnerability scanning. It is off unless Database
// or DatabaseFile is set.
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
	// Sets are the updater sets to run (debian, ubuntu, alpine, rhel-vex,
	// osv, ...). Empty or absent: none, and vulnerability data comes only
	// from `airlock vulndb import`.
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
