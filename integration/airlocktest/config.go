package airlocktest

// Config is what a test chooses about an airlock; the listen addresses, the
// storage path and the log settings are filled in by Start.
type Config struct {
	Upstreams []Upstream
	// TagTTL is cache.tagTTL; "5m" when empty.
	TagTTL string
	// Tracing is the tracing section; nil leaves tracing off.
	Tracing *Tracing
	// ReadyDelay is shutdown.readyDelay; empty leaves it unset.
	ReadyDelay string
	// MaxSize and EvictInterval are cache.maxSize and cache.evictInterval;
	// empty leaves them unset.
	MaxSize, EvictInterval string
	// MaxBlobSize is cache.maxBlobSize; empty leaves it unset.
	MaxBlobSize string
	// PullAuth is the auth section (client authentication); nil leaves
	// pulls open.
	PullAuth *PullAuth
	// Policies is the policies section; empty approves every image.
	Policies []Policy
	// AdminTokenFile is admin.tokenFile; empty leaves the admin API
	// answering 401.
	AdminTokenFile string
	// Alerts is the alerts section; nil sends no webhooks.
	Alerts *Alerts
	// Scanner is the scanner section; nil leaves vulnerability scanning
	// off.
	Scanner *Scanner
	// Env is added to the environment airlock runs in (e.g. HTTPS_PROXY
	// pointing at a trap that records any request leaving loopback).
	Env []string
}

// Policy is one entry of the policies list.
type Policy struct {
	Name  string   `yaml:"name"`
	Match []string `yaml:"match"`
	Mode  string   `yaml:"mode,omitempty"`
	Pins  string   `yaml:"pins,omitempty"`
	// Signature is the policy's signature check; nil checks none.
	Signature *Signature `yaml:"signature,omitempty"`
	// Vulnerabilities is the policy's vulnerability check; nil checks
	// none (and needs no Scanner).
	Vulnerabilities *Vulnerabilities `yaml:"vulnerabilities,omitempty"`
}

// Alerts is airlock's alerts section.
type Alerts struct {
	Webhooks []Webhook `yaml:"webhooks"`
}

// Webhook is one entry of alerts.webhooks.
type Webhook struct {
	URL        string   `yaml:"url"`
	SecretFile string   `yaml:"secretFile,omitempty"`
	Events     []string `yaml:"events,omitempty"`
}

// PullAuth is airlock's auth section.
type PullAuth struct {
	Htpasswd  string              `yaml:"htpasswd"`
	Realm     string              `yaml:"realm,omitempty"`
	Upstreams map[string][]string `yaml:"upstreams,omitempty"`
}

// Tracing is airlock's tracing section.
type Tracing struct {
	Endpoint string `yaml:"endpoint"`
	Insecure bool   `yaml:"insecure"`
}

// Upstream is one entry of the upstreams list, in airlock's YAML terms.
type Upstream struct {
	Name         string   `yaml:"name"`
	URL          string   `yaml:"url"`
	Aliases      []string `yaml:"aliases,omitempty"`
	Default      bool     `yaml:"default,omitempty"`
	Repositories []string `yaml:"repositories,omitempty"`
	Auth         *Auth    `yaml:"auth,omitempty"`
	Retry        *Retry   `yaml:"retry,omitempty"`
	// TagTTL overrides cache.tagTTL for this upstream ("2s"); empty
	// leaves it unset.
	TagTTL string `yaml:"tagTTL,omitempty"`
}

// Auth names the files airlock reads upstream credentials from.
type Auth struct {
	UsernameFile string `yaml:"usernameFile"`
	PasswordFile string `yaml:"passwordFile"`
}

// Retry is an upstream's retry policy; durations in Go syntax ("50ms").
type Retry struct {
	MaxAttempts int    `yaml:"maxAttempts"`
	BaseDelay   string `yaml:"baseDelay"`
	MaxDelay    string `yaml:"maxDelay"`
}

// FastRetry gives up quickly, for tests that make upstreams fail.
func FastRetry() *Retry {
	return &Retry{MaxAttempts: 2, BaseDelay: "50ms", MaxDelay: "1s"}
}

// file is the YAML document airlock reads.
type file struct {
	Listen  string `yaml:"listen"`
	Storage struct {
		Path string `yaml:"path"`
	} `yaml:"storage"`
	Admin struct {
		Listen    string `yaml:"listen"`
		TokenFile string `yaml:"tokenFile,omitempty"`
	} `yaml:"admin"`
	Cache struct {
		TagTTL        string `yaml:"tagTTL"`
		MaxSize       string `yaml:"maxSize,omitempty"`
		EvictInterval string `yaml:"evictInterval,omitempty"`
		MaxBlobSize   string `yaml:"maxBlobSize,omitempty"`
	} `yaml:"cache"`
	Log struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	} `yaml:"log"`
	Upstreams []Upstream `yaml:"upstreams"`
	Policies  []Policy   `yaml:"policies,omitempty"`
	Alerts    *Alerts    `yaml:"alerts,omitempty"`
	Auth      *PullAuth  `yaml:"auth,omitempty"`
	Tracing   *Tracing   `yaml:"tracing,omitempty"`
	Scanner   *Scanner   `yaml:"scanner,omitempty"`
	Shutdown  struct {
		ReadyDelay string `yaml:"readyDelay,omitempty"`
	} `yaml:"shutdown,omitempty"`
}
