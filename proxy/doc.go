// Package proxy serves the pull side of the OCI distribution API in front of
// several upstream registries.
//
// A request is routed to exactly one configured upstream — by path prefix
// (/v2/<upstream>/<repo>/...), by containerd's ?ns=<host> query (matched
// against each upstream's aliases and its own host) or to the default
// upstream — and checked against that upstream's repository allow-list
// before anything else happens. A request that names no configured upstream
// is refused without contacting any host: airlock is never an open proxy.
//
// Content is content-addressed and verified:
//
//   - Manifests and blobs from an upstream are hashed while they stream. A
//     mismatch is never stored and the client receiving the stream sees a
//     broken transfer, never a complete wrong object.
//   - Concurrent requests for the same blob share one upstream transfer (a
//     fill). The fill writes a spool file; every client, the first one
//     included, reads the spool as it grows, so the first byte leaves as soon
//     as it arrives. Fills run on a context detached from the client that
//     started them: a client hanging up never wastes the download. No
//     response completes before the fill's digest matched, an empty one
//     included; once it matched, every client of the fill gets the whole
//     blob, even if caching it then fails.
//   - Manifests are resolved, checked against a Gate and only then served,
//     byte for byte as the upstream sent them. Indexes are never rewritten
//     and only the children a client asks for are fetched.
//   - When an upstream is unreachable, cached content is served: by digest
//     always, by tag from the last known mapping (stale-if-error).
//
// Errors are returned by handlers and written once, as OCI error JSON, by
// writeError.
package proxy
