// Package signaturetest makes real signatures for tests: key pairs,
// cosign tag-scheme signatures byte-compatible with cosign's (simple
// signing payload, signature / certificate / chain / Rekor bundle / RFC
// 3161 annotations), keyless signatures from an in-process Sigstore
// (Fulcio CA with certificate-transparency SCTs, Rekor log, timestamp
// authority) and its trusted_root.json, cosign v3 Sigstore bundles
// (v0.3, DSSE over an in-toto statement), and the helpers that upload
// them into an upstreamtest.Upstream and read them back as a
// signature.Fetcher.
//
// Everything is real cryptography: the verifier under test cannot tell
// these artifacts from cosign's, except that the Sigstore is one the
// test made, trusted only through the trusted root it writes.
//
// VirtualSigstore builds on sigstore-go's pkg/testing/ca for its Rekor
// log and timestamp authority, and fixes that package's traps: the log
// IDs of its trusted root are bytes (not hex strings), its Fulcio
// certificates carry a signed certificate timestamp from a CT log in the
// root (airlock requires one by default), and its log entries carry the
// kind, version, inclusion promise and inclusion proof that v0.3 bundles
// need.
//
// Uploads (Push*) are real HTTP requests to the Upstream's registry, so
// they show up in its request records; call Reset after seeding when a
// test counts requests. They authenticate as the Upstream demands: an
// anonymous token from a DockerHubStyle Upstream's endpoint, or the
// credentials WithBasicAuth gives for a Basic one.
package signaturetest
