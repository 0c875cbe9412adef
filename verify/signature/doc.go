// Package signature verifies an image's signatures against one policy's
// trust material: cosign key-based and keyless signatures from the tag
// scheme ("sha256-<hex>.sig", simple-signing payloads with their
// certificate, chain, Rekor bundle and RFC 3161 annotations), cosign v3
// Sigstore bundles from the referrers API (or its "sha256-<hex>" fallback
// tag), and Notary Project signatures. Everything is checked offline,
// against keys, a trusted root and trust stores read from disk.
//
// A signature counts only when it names the exact digest being verified:
// a valid signature copied from another image is refused, and an
// attestation is not a signature.
//
// A Verifier holds one policy's trust material, read once by New; its
// Hash changes whenever a setting or a byte of that material does, so
// recorded evidence can be reused exactly while it still applies.
// Verify returns evidence whenever it could decide, verified or not,
// with a sentence a person at `docker pull` understands ("no signature
// found (looked for sha256-<hex>.sig and OCI referrers)", "1 signature
// found, not verified: it names another image (sha256:…)"). It returns
// an error only when it could not decide: the registry failed for a
// reason other than an absent artifact, or the context ended. A gate
// should then retry, not quarantine.
//
// Discovery is bounded: at most maxSignatures signatures are examined
// and maxBytes of signature manifests and layers read per image; beyond
// either, the check stops and says so. Within one policy any listed key
// or keyless identity suffices; an attestation type the policy requires
// must also be present, signed by the same trust.
package signature

import (
	"context"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Fetcher reads from the registry the image came from. airlock's proxy
// implements it over its own cache, so signature artifacts are fetched
// once, verified as every other manifest and blob, and served to clients
// later from the cache.
type Fetcher interface {
	// Manifest fetches a manifest of the image's repository by tag or
	// digest: its body, media type and digest. An absent one is an error
	// wrapping ErrNotFound.
	Manifest(ctx context.Context, ref string) (body []byte, mediaType string, d digest.Digest, err error)
	// Blob fetches a blob of the repository, refusing one larger than max
	// bytes.
	Blob(ctx context.Context, d digest.Digest, max int64) ([]byte, error)
	// Referrers lists the manifests whose subject is d (the OCI referrers
	// API, or its tag-schema fallback), only those of artifactType when it
	// is set.
	Referrers(ctx context.Context, d digest.Digest, artifactType string) ([]ocispec.Descriptor, error)
}

// ErrNotFound is wrapped by a Fetcher's errors for what the registry does
// not hold. An error with a NotFound() method anywhere in its chain (as
// containerd's errdefs define them) counts the same, so a Fetcher can say
// "not found" without importing this package.
var ErrNotFound = errNotFound{}

type errNotFound struct{}

func (errNotFound) Error() string { return "not found" }
