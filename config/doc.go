// Package config is airlock's configuration: one typed [Config], decoded
// from YAML, completed with defaults and validated once at start-up.
//
// # Guarantees
//
// A *Config returned by [Load], [Parse] or [Default] is complete and valid:
// every field with a documented default holds a value, every listen address
// parses, every upstream has a unique name that is a single path segment
// and an http or https URL, no two upstreams share a URL host, at most one
// upstream is the default, and each alias belongs to one upstream and is
// neither another upstream's name nor its URL host, so
// [Config.UpstreamForHost] is unambiguous. A policy with vulnerabilities
// comes with a scanner (a database), valid severities and waivers that
// each have an id, an end ([Waiver.Ends] parses) and a reason. Code that
// receives such a Config need not check these again.
//
// Decoding is strict. A key that airlock does not know is an error naming
// the file, line and key, with the nearest known spelling:
//
//	airlock.yaml:7: unknown key "upstream" (did you mean "upstreams"?)
//
// A misspelt key is never silently ignored, because an ignored key usually
// means a setting the operator believes is in force is not. Validation
// reports every problem at once, each with the key path and the line to
// edit, and each wrapping [ErrInvalid]:
//
//	airlock.yaml:14: upstreams[1].url: scheme must be http or https, as in https://quay.io
//	airlock.yaml:15: upstreams[1].maxBlobTransfers: want an integer, got "lots"
//
// [Open] with [ScopeHost] adds the checks that need the machine airlock
// runs on (the listen hosts are its own, the TLS, CA and credentials files
// exist and load, storage.path can be written) to the same list. It is the one path `airlock serve`,
// SIGHUP and `airlock config check` take, so a file check passes is one
// serve starts with. [Diff] names the keys two configurations differ in,
// which a reload uses to say which changes need a restart.
//
// # Secrets
//
// The configuration holds the paths of credential files, never credentials.
// [Auth.Credentials] reads the files on each call, so a rotated Kubernetes
// Secret takes effect without a restart, and its errors never contain a
// credential.
//
// Nothing here is global: each call returns a new Config that the caller
// owns.
package config
