// Package upstreamtest runs real container registries in-process on loopback
// so that airlock's end-to-end tests and benchmarks have upstreams they can
// observe and misbehave on demand.
//
// Each Upstream is go-containerregistry's reference registry (push, pull,
// referrers) behind a front that:
//
//   - records every request it receives, on every listener it owns, so a test
//     can assert "exactly one upstream GET per blob" or "zero upstream
//     requests";
//   - authenticates like the registry it stands in for: Plain (none), Basic
//     (HTTP Basic with fixed credentials) or DockerHubStyle (Bearer tokens
//     from a token endpoint on its own listener, blob GETs redirected to a
//     CDN listener on another port that refuses — and records as a
//     violation — any request carrying an Authorization header);
//   - misbehaves on demand: Tamper serves altered bytes of the same length
//     for one digest, Down cuts every connection until Up, Throttle limits
//     the bandwidth of responses and Delay holds every request before it is
//     answered.
//
// Seeding (PushImage, PushIndex) bypasses authentication and is not recorded,
// so counts only ever reflect traffic from the system under test. Images are
// made of real gzip tar layers with a valid image config whose diff_ids match,
// so containerd and dockerd can unpack them.
//
// Guarantees: an Upstream listens only on 127.0.0.1, all of its listeners are
// closed by the test's cleanup, and every method is safe for concurrent use.
package upstreamtest
