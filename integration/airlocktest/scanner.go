package airlocktest

// Scanner is airlock's scanner section, in its YAML terms.
type Scanner struct {
	// Database is the scanner's PostgreSQL connection string.
	Database string `yaml:"database"`
	// Concurrency and Attempts are left out when 0 (airlock's defaults).
	Concurrency int `yaml:"concurrency,omitempty"`
	Attempts    int `yaml:"attempts,omitempty"`
}

// Vulnerabilities is a policy's vulnerabilities section.
type Vulnerabilities struct {
	BlockSeverity   string   `yaml:"blockSeverity"`
	UnknownSeverity string   `yaml:"unknownSeverity,omitempty"`
	IgnoreUnfixed   bool     `yaml:"ignoreUnfixed,omitempty"`
	Allow           []Waiver `yaml:"allow,omitempty"`
	VEX             []string `yaml:"vex,omitempty"`
	// Unscanned is deny or allow; empty leaves airlock's default (deny).
	Unscanned string `yaml:"unscanned,omitempty"`
}

// Waiver is one entry of a vulnerabilities section's allow list.
type Waiver struct {
	ID           string   `yaml:"id"`
	Repositories []string `yaml:"repositories,omitempty"`
	// Until is YYYY-MM-DD or an RFC 3339 time.
	Until  string `yaml:"until"`
	Reason string `yaml:"reason"`
}
