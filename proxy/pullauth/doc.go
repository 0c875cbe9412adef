// Package pullauth authenticates the clients that pull through airlock.
//
// An [Authenticator] is an http.Handler placed in front of the registry
// API. With a [Policy] that holds users it answers every request that does
// not carry valid HTTP Basic credentials with 401 UNAUTHORIZED and the
// challenge
//
//	WWW-Authenticate: Basic realm="airlock", charset="UTF-8"
//
// the /v2/ base endpoint included, because `docker login` and the
// daemons' ping decide from that endpoint whether, and how, to send
// credentials. Users come from an htpasswd file of bcrypt hashes
// ([ParseHtpasswd]), as `htpasswd -B` writes it. A Policy may also restrict
// an upstream to some users: a request that routes to such an upstream for
// any other authenticated user gets 403 DENIED before any upstream is
// contacted.
//
// Only Basic is offered, not the bearer-token flow of Docker Hub: docker,
// containerd (hosts.toml headers and CRI credentials), skopeo, podman and
// crane all answer a Basic challenge, a token endpoint would add signing
// keys and a second round trip per repository without keeping the
// password off the wire (the token request itself carries it), and the
// password is protected the same way in both cases: by TLS on the
// listener, or by keeping the listener on a trusted network.
//
// Guarantees:
//
//   - A request reaches the wrapped handler only with credentials that
//     verified against the current users, and, when it routes to a
//     restricted upstream, only for a user allowed there.
//   - Unknown users cost the same bcrypt comparison as known ones, so
//     response time does not reveal which user names exist.
//   - Successful verifications are cached (bounded, expiring, keyed by a
//     keyed hash of user and password, never the password itself), so the
//     twenty requests of a pull pay one bcrypt comparison, and a changed or
//     removed password stops working at the next policy reload. Failed
//     attempts are never cached.
//   - At most a few bcrypt comparisons run at once and only a bounded
//     number wait; beyond that a client gets 429 TOOMANYREQUESTS, so a
//     flood of bad credentials cannot take all the CPU from pulls.
//   - Passwords and Authorization headers are never logged.
package pullauth
