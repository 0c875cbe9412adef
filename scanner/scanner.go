package scanner

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Content is where the scanner reads what it scans: the proxy's cache.
// Both methods read through the proxy for the repository, so content not
// cached yet is fetched once from its upstream, verified and cached, and
// what a client pulls later comes from the cache. Neither admits the
// content to clients.
type Content interface {
	// Manifest returns the manifest repo@d and its media type.
	Manifest(ctx context.Context, repo string, d digest.Digest) ([]byte, string, error)
	// Blob opens blob d of repo, as stored (compressed as the upstream
	// sent it).
	Blob(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, error)
}

// Job asks for one manifest to be scanned.
type Job struct {
	// Repository is "<upstream>/<repository>", where the content is read.
	Repository string
	Digest     digest.Digest
}

// Options configure a Scanner.
type Options struct {
	Config  config.Scanner
	Content Content
	// OnResult receives every change of a digest's scan: queued,
	// scanning, done (with findings), failed, and a new result after
	// vulnerability data changed. It must not block for long.
	OnResult func(ctx context.Context, d digest.Digest, s metadata.Scan)
	// Client is what the updaters fetch feeds with; nil uses a client
	// with the default transport.
	Client *http.Client
	// WorkDir is where layers are unpacked while indexed (Config.WorkDir
	// wins when set).
	WorkDir    string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// ErrUnavailable wraps errors of a scanner whose database cannot be
// reached: the caller holds new images and retries later.
var ErrUnavailable = errors.New("the scanner's database is unavailable")

// ErrNotScanned means no scan of the digest is known.
var ErrNotScanned = errors.New("not scanned")

// SBOM formats.
const (
	FormatSPDX      = "spdx"
	FormatCycloneDX = "cyclonedx"
)

// ImportResult says what an import changed.
type ImportResult struct {
	// Updaters are the updaters whose data the file replaced.
	Updaters []string `json:"updaters"`
	// Vulnerabilities counts the vulnerabilities added and removed.
	Added   int `json:"added"`
	Removed int `json:"removed"`
	// Affected counts the scanned manifests matched again.
	Affected int `json:"affected"`
}
