package config

import (
	_ "embed"
	"path/filepath"
	"strings"
	"time"
)

// defaultYAML is the configuration Default returns.
//
//go:embed default.yaml
var defaultYAML []byte

// Default returns airlock's built-in configuration: the registry API on
// 127.0.0.1:5000 without client authentication, the admin API on 127.0.0.1:5001, storage in ./airlock-data, and the
// upstreams dockerhub (the default, alias docker.io), gcr (gcr.io) and quay
// (quay.io). Each call returns a new Config the caller may change.
func Default() *Config {
	c, err := Parse("default.yaml", defaultYAML)
	if err != nil {
		// The embedded file is fixed at build time and covered by tests.
		panic("config: built-in default is invalid: " + err.Error())
	}
	return c
}

// Defaults for keys that are absent or zero.
const (
	defaultListen           = "127.0.0.1:5000"
	defaultAdminListen      = "127.0.0.1:5001"
	defaultStoragePath      = "./airlock-data"
	defaultTagTTL           = Duration(5 * time.Minute)
	defaultEvictInterval    = Duration(5 * time.Minute)
	defaultDrainTimeout     = Duration(30 * time.Second)
	defaultHeaderTimeout    = Duration(30 * time.Second)
	defaultIdleTimeout      = Duration(60 * time.Second)
	defaultRetryAttempts    = 4
	defaultRetryBaseDelay   = Duration(200 * time.Millisecond)
	defaultRetryMaxDelay    = Duration(10 * time.Second)
	filesystemRootParameter = "rootdirectory"
)

// ApplyDefaults fills every absent or zero field that has a default, as
// documented on each field. It is idempotent. Load and Parse call it; call
// it on a Config built in code before Validate.
func (c *Config) ApplyDefaults() {
	setDefault(&c.Listen, defaultListen)
	setDefault(&c.Storage.Path, defaultStoragePath)
	setDefault(&c.Storage.Driver, DriverFilesystem)
	if c.Storage.Driver == DriverFilesystem {
		if c.Storage.Parameters == nil {
			c.Storage.Parameters = map[string]any{}
		}
		if _, ok := c.Storage.Parameters[filesystemRootParameter]; !ok && c.Storage.Path != "" {
			c.Storage.Parameters[filesystemRootParameter] = filepath.Join(c.Storage.Path, "blobs")
		}
	}
	c.Metadata.applyDefaults()
	setDefault(&c.Cache.TagTTL, defaultTagTTL)
	setDefault(&c.Cache.MaxManifestBytes, MaxManifestBytes)
	setDefault(&c.Cache.EvictInterval, defaultEvictInterval)
	setDefault(&c.Admin.Listen, defaultAdminListen)
	setDefault(&c.Tracing.SampleRatio, 1)
	setDefault(&c.Tracing.ServiceName, "airlock")
	setDefault(&c.Log.Level, LevelInfo)
	setDefault(&c.Log.Format, FormatJSON)
	setDefault(&c.Shutdown.DrainTimeout, defaultDrainTimeout)
	for i := range c.Policies {
		setDefault(&c.Policies[i].Mode, ModeEnforce)
		if c.Policies[i].Signature != nil {
			c.Policies[i].Signature.applyDefaults()
		}
		if c.Policies[i].Vulnerabilities != nil {
			c.Policies[i].Vulnerabilities.applyDefaults()
		}
	}
	c.Scanner.applyDefaults()
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		// A trailing slash would double up when paths are appended.
		if trimmed := strings.TrimRight(u.URL, "/"); !strings.HasSuffix(trimmed, ":") {
			u.URL = trimmed
		}
		setDefault(&u.TagTTL, c.Cache.TagTTL)
		setDefault(&u.Timeouts.Header, defaultHeaderTimeout)
		setDefault(&u.Timeouts.Idle, defaultIdleTimeout)
		setDefault(&u.Retry.MaxAttempts, defaultRetryAttempts)
		setDefault(&u.Retry.BaseDelay, defaultRetryBaseDelay)
		setDefault(&u.Retry.MaxDelay, defaultRetryMaxDelay)
	}
}

func setDefault[T comparable](field *T, value T) {
	var zero T
	if *field == zero {
		*field = value
	}
}
