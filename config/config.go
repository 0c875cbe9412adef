package config

import (
	"log/slog"
)

// Config is the whole of airlock's configuration. The zero value is not
// usable; obtain one from [Load], [Parse] or [Default], which fill every
// default listed below and validate the result.
//
// A field documented as "0 or absent means X" cannot be set to zero: zero is
// how the decoder reports a missing key.
type Config struct {
	// Listen is the host:port of the registry API (the /v2/ endpoints).
	// Anyone who can reach it can pull unless Auth is set, so the default
	// is loopback and listening on the network is a deliberate act
	// (":5000" for all interfaces). Default "127.0.0.1:5000".
	Listen string `yaml:"listen"`

	// TLS enables HTTPS on the registry listener. Default: plain HTTP,
	// which suits a loopback or in-cluster gateway behind a TLS-terminating
	// ingress.
	TLS TLS `yaml:"tls"`

	// Storage says where verified content lives, and with the default
	// metadata driver its metadata too.
	Storage Storage `yaml:"storage"`

	// Metadata says where tags, manifests, links, image states, the audit
	// log and the alerts' outbox live: bbolt in storage.path (default) or
	// PostgreSQL. Read at start only.
	Metadata Metadata `yaml:"metadata"`

	// Cluster runs this airlock as one replica of several sharing
	// PostgreSQL metadata and a blob store. Default: off, one process.
	// Read at start only.
	Cluster Cluster `yaml:"cluster"`

	// Cache bounds how long and how much airlock trusts cached state.
	Cache Cache `yaml:"cache"`

	// Auth requires clients to authenticate to pull. Default: off, anyone
	// who can reach Listen can pull.
	Auth ClientAuth `yaml:"auth"`

	// Admin configures the admin API, served on its own listener so it can
	// be kept off the network that pulls images.
	Admin Admin `yaml:"admin"`

	// Log configures the process logger.
	Log Log `yaml:"log"`

	// Shutdown configures graceful termination.
	Shutdown Shutdown `yaml:"shutdown"`

	// Tracing exports OpenTelemetry spans for each pull. Default: off.
	Tracing Tracing `yaml:"tracing"`

	// Upstreams are the only registries airlock ever contacts. At least one
	// is required.
	Upstreams []Upstream `yaml:"upstreams"`

	// Policies decide which images are served: every policy whose match
	// covers a repository must pass for an image there to be approved.
	// Repositories no policy matches are served as they are. Default: none.
	Policies []Policy `yaml:"policies"`

	// Scanner scans images for vulnerabilities with claircore, on
	// PostgreSQL. Default: off (Database and DatabaseFile empty); a
	// policy with vulnerabilities then is an error, and so is any other
	// scanner key. Read at start only: a change needs a restart, while
	// the policies' vulnerability checks are reloaded with the policies.
	Scanner Scanner `yaml:"scanner"`

	// Alerts send state changes (quarantined, blocked, released, ...) to
	// webhooks. Default: none.
	Alerts Alerts `yaml:"alerts"`
}

// TLS is a certificate and key for a listener. Both files are PEM and both
// are required when either is set.
type TLS struct {
	// CertFile is the PEM certificate chain. Default "" (no TLS).
	CertFile string `yaml:"certFile"`
	// KeyFile is the PEM private key for CertFile. Default "".
	KeyFile string `yaml:"keyFile"`
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// Storage drivers airlock can build. The names are those of the
// distribution/v3 storage drivers they select.
const (
	DriverFilesystem = "filesystem"
	DriverS3         = "s3"
	DriverGCS        = "gcs"
	DriverAzure      = "azure"
)

// Storage is where content and metadata are kept.
type Storage struct {
	// Path is a local directory that holds the downloads in progress,
	// the bbolt metadata database (metadata.driver bbolt) and, with the
	// filesystem driver, the blobs (under <path>/blobs). Default
	// "./airlock-data".
	Path string `yaml:"path"`

	// Driver selects the blob storage driver: filesystem, s3, gcs or azure.
	// Default "filesystem".
	Driver string `yaml:"driver"`

	// Parameters are passed unchanged to the driver's factory (bucket,
	// region, accountname, ...). For the filesystem driver "rootdirectory"
	// defaults to <path>/blobs. Default: empty.
	Parameters map[string]any `yaml:"parameters"`

	// DisableRedirects serves the bytes of every hit through airlock
	// instead of redirecting clients to the object store's presigned URL
	// (s3, gcs, azure). Set it when clients cannot reach the store's
	// endpoint. The filesystem driver never redirects. Default false.
	DisableRedirects bool `yaml:"disableRedirects"`

	// LocalCacheSize keeps, with s3, gcs or azure, a copy of each blob
	// this process commits in <path>/cache, up to this [Size], least
	// recently used first out: hits on them are served from local files
	// and keep being served while the object store is down. Blobs other
	// replicas committed are read from the object store. It counts toward
	// the volume of storage.path, not toward cache.maxSize. 0 or absent
	// means no local copies.
	LocalCacheSize Size `yaml:"localCacheSize"`
}

// MaxManifestBytes is the largest manifest airlock accepts, the same bound
// the OCI distribution spec asks registries to support. Larger documents are
// refused rather than buffered, so a hostile upstream cannot exhaust memory.
const MaxManifestBytes = 4 << 20

// Cache bounds how long and how much cached state is trusted.
type Cache struct {
	// TagTTL is how long a tag→digest mapping is served without asking the
	// upstream again. Digest references never expire: their content cannot
	// change. 0 or absent means 5m.
	TagTTL Duration `yaml:"tagTTL"`

	// MaxManifestBytes is the largest manifest, in bytes, fetched from an
	// upstream; at most MaxManifestBytes (4 MiB). 0 or absent means 4194304.
	MaxManifestBytes int64 `yaml:"maxManifestBytes"`

	// MaxBlobSize bounds one blob transfer whose size no manifest declared
	// (a blob fetched by digest alone, a schema 1 image), as a [Size]. A
	// blob whose admitted manifest declares its size may not differ from
	// it. 0 or absent means 32GiB.
	MaxBlobSize Size `yaml:"maxBlobSize"`

	// MaxSize bounds what the cache keeps, as a [Size] such as "500GiB":
	// blobs, downloads in progress and the metadata index (manifests, tags)
	// together. Every EvictInterval, above it, the least recently used blobs
	// are evicted down to 90% of it (they are fetched again on their next
	// pull); blobs used in the last ten minutes are kept even then. Leave
	// headroom below the volume size for what is pulled between sweeps.
	// 0 or absent means unlimited: nothing is evicted.
	MaxSize Size `yaml:"maxSize"`

	// EvictInterval is how often storage is measured and, over MaxSize,
	// trimmed. 0 or absent means 5m.
	EvictInterval Duration `yaml:"evictInterval"`
}

// Admin configures the admin API.
type Admin struct {
	// Listen is the host:port of the admin API. Default "127.0.0.1:5001":
	// loopback only, so exposing it is a deliberate act.
	Listen string `yaml:"listen"`

	// TokenFile holds the admin API's bearer tokens, one per line, as
	// "token" or "name:token" (the name is what the audit log records as
	// the actor). It is re-read when it changes, so a rotated Secret takes
	// effect without a restart. Default "": the admin API answers 401 to
	// everything but /healthz, /readyz and /metrics.
	TokenFile string `yaml:"tokenFile"`
}

// Log levels and formats accepted in [Log].
const (
	LevelDebug = "debug"
	LevelInfo  = "info"
	LevelWarn  = "warn"
	LevelError = "error"

	FormatJSON = "json"
	FormatText = "text"
)

// Log configures the logger.
type Log struct {
	// Level is the least severe level written: debug, info, warn or error.
	// Default "info".
	Level string `yaml:"level"`
	// Format is json (one object per line) or text (logfmt-like).
	// Default "json".
	Format string `yaml:"format"`
}

// SlogLevel returns Level as a slog.Level. Call it on a validated Config;
// an unknown level reads as info.
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case LevelDebug:
		return slog.LevelDebug
	case LevelWarn:
		return slog.LevelWarn
	case LevelError:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// Shutdown configures graceful termination.
type Shutdown struct {
	// DrainTimeout is how long in-flight pulls may run after SIGTERM before
	// their connections are closed. 0 or absent means 30s.
	DrainTimeout Duration `yaml:"drainTimeout"`
	// ReadyDelay is how long airlock keeps accepting new pulls after SIGTERM
	// has turned /readyz to 503, so that load balancers and Kubernetes
	// endpoints stop routing to it before its listener closes. The drain
	// starts after it. 0 or absent means none (the listener closes at once).
	ReadyDelay Duration `yaml:"readyDelay"`
}

// Tracing configures OpenTelemetry tracing. Spans cover a pull from routing
// through the cache and the upstream to digest verification.
type Tracing struct {
	// Endpoint is the OTLP/HTTP collector, host:port (e.g.
	// "otel-collector:4318"). Default "": tracing is off and costs nothing.
	Endpoint string `yaml:"endpoint"`
	// Insecure sends spans over plain HTTP instead of HTTPS. Default false.
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the fraction of new traces recorded, from 0 to 1;
	// requests that arrive with a sampled traceparent are always recorded.
	// 0 or absent means 1 (every pull).
	SampleRatio float64 `yaml:"sampleRatio"`
	// ServiceName is the service.name resource attribute. Default "airlock".
	ServiceName string `yaml:"serviceName"`
}

// Enabled reports whether spans are exported.
func (t Tracing) Enabled() bool { return t.Endpoint != "" }

// Upstream is one remote registry airlock pulls from.
type Upstream struct {
	// Name is the path prefix that selects this upstream:
	// /v2/<name>/<repository>/... It is a single lowercase path segment of
	// [a-z0-9._-], starting and ending with a letter or digit, and not "v2".
	// Required.
	Name string `yaml:"name"`

	// URL is the registry's base URL, scheme and host (and port), without
	// /v2. http:// is allowed for private mirrors and tests. Required.
	URL string `yaml:"url"`

	// Aliases are registry hosts (host or host:port) whose pulls are routed
	// here when a client names them, as containerd does with ?ns=docker.io.
	// The upstream's own URL host is always matched too. Default: none.
	Aliases []string `yaml:"aliases"`

	// Default makes this upstream serve un-prefixed paths /v2/<repository>/...
	// At most one upstream may be the default. Default false.
	Default bool `yaml:"default"`

	// Repositories is an allow-list of repository globs; see
	// [Upstream.Allowed]. Absent means every repository is allowed.
	Repositories []string `yaml:"repositories"`

	// Auth holds the credentials for this upstream. Default: anonymous.
	Auth Auth `yaml:"auth"`

	// CAFile is a PEM bundle of extra certificate authorities trusted for
	// this upstream, in addition to the system roots. Default "".
	CAFile string `yaml:"caFile"`

	// InsecureSkipVerify disables TLS certificate verification for this
	// upstream. Digests are still verified, so content stays intact, but
	// the upstream's identity is not. Default false.
	InsecureSkipVerify bool `yaml:"insecureSkipVerify"`

	// TagTTL overrides cache.tagTTL for this upstream. 0 or absent means
	// cache.tagTTL; after loading it always holds the effective value.
	TagTTL Duration `yaml:"tagTTL"`

	// Timeouts bound how long the upstream may keep airlock waiting.
	Timeouts Timeouts `yaml:"timeouts"`

	// Retry configures retries of failed upstream requests.
	Retry Retry `yaml:"retry"`

	// MaxBlobTransfers bounds how many blobs are downloaded from this
	// upstream at once; more wait for a slot. Manifest and tag lookups never
	// wait behind blobs. Each blob is downloaded once however many clients
	// ask, so this bounds distinct layers, not clients. 0 or absent means
	// no bound.
	MaxBlobTransfers int `yaml:"maxBlobTransfers"`

	// InternalRedirectHosts are hosts (DNS names or IP literals, without
	// port) on loopback or private addresses that this upstream's redirects
	// and token realms may lead to, such as an in-house CDN. Other hops to
	// such addresses are refused unless the upstream itself is on an
	// address of the same kind; link-local and unspecified addresses, cloud
	// metadata endpoints (169.254.169.254, Azure's 168.63.129.16, AWS's
	// fd00:ec2::254) and airlock's own listeners are refused whatever this
	// says.
	// Default: none.
	InternalRedirectHosts []string `yaml:"internalRedirectHosts"`
}

// Timeouts bound waits on an upstream.
type Timeouts struct {
	// Header is the longest wait for response headers. 0 or absent means 30s.
	Header Duration `yaml:"header"`
	// Idle is the longest a response body may make no progress; a slow but
	// moving transfer of a large layer is never cut off. 0 or absent means
	// 60s.
	Idle Duration `yaml:"idle"`
}

// Retry configures retries with capped exponential backoff.
type Retry struct {
	// MaxAttempts counts the first try; 1 disables retries, and at most
	// 100 are allowed. 0 or absent means 4.
	MaxAttempts int `yaml:"maxAttempts"`
	// BaseDelay is the wait before the first retry, doubled for each further
	// one. 0 or absent means 200ms.
	BaseDelay Duration `yaml:"baseDelay"`
	// MaxDelay caps the wait between attempts. 0 or absent means 10s.
	MaxDelay Duration `yaml:"maxDelay"`
}
