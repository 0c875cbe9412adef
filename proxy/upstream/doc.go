// Package upstream is airlock's client for one remote registry: the pull side
// of the OCI distribution API (manifests, blobs, tags, referrers) spoken to
// Docker Hub, gcr.io, quay.io or a credentialed vendor registry.
//
// A [Registry] hides what makes real upstreams awkward, so that the proxy
// above it only sees content or a classified error:
//
//   - Authentication. A 401 challenge is parsed (Bearer or Basic); Bearer
//     tokens are fetched from the realm with the configured credentials (or
//     anonymously), cached per repository until shortly before they expire,
//     and fetched once for any number of concurrent requests. Once an upstream
//     has asked for authentication, later requests carry it pre-emptively, so a
//     pull does not pay a 401 round trip. Credentials are read through a
//     callback at the moment they are needed, so rotated secrets take effect
//     without a restart. Credentials and tokens never appear in logs or errors.
//   - Redirects. Blob downloads are commonly redirected to a CDN on another
//     host. Redirects are followed (at most 10), and the Authorization header
//     is only ever sent to the host it was issued for. A 401 from a redirect
//     target is the CDN's answer, not the registry's challenge: only the
//     upstream's own origin sets the token realm, and credentials go to a
//     realm only over https (or on the upstream's own host when the upstream
//     is plain HTTP). Every connection off the upstream's origin (redirect
//     targets, token realms) is checked at the address actually dialled:
//     never link-local, unspecified, cloud metadata or airlock's own
//     listeners, and loopback or private addresses only when the upstream
//     itself is on one of that kind or the host is listed in
//     InternalRedirectHosts.
//   - Transient failures. Network errors, 5xx and 429 are retried with
//     exponential backoff and jitter, honouring Retry-After, as long as no
//     byte of the response has been handed to the caller. A blob body whose
//     connection drops mid-stream is resumed with a Range request, invisibly to
//     the reader, when the upstream answers it with a correct 206.
//   - Timeouts. Response headers must arrive within HeaderTimeout; a body read
//     fails only when it makes no progress for IdleTimeout. There is no total
//     deadline on a body: a slow but progressing multi-gigabyte layer is never
//     cut off.
//
// Every error returned wraps exactly one classifying sentinel ([ErrNotFound],
// [ErrDenied], [ErrRateLimited], [ErrUnavailable], [ErrReferrersUnsupported],
// [ErrInvalid]) and is an [*Error] carrying the upstream name, operation,
// repository, reference, HTTP status and the upstream's OCI error code.
//
// This package does not verify digests of the content it returns: it reports
// what the upstream claims (Docker-Content-Digest, Content-Length) and leaves
// verification, and bounding of manifest bodies, to the caller. It keeps no
// package-level state; every cache and in-flight table belongs to a Registry.
package upstream
