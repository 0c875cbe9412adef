package signaturetest

import (
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// One-call signing of what an Upstream serves, for gate and end-to-end
// tests: each signs the manifest subject (from Subject or IndexSubject)
// and pushes the signature where cosign would.

// IndexSubject describes a multi-platform image pushed to an Upstream.
func IndexSubject(tb testing.TB, x upstreamtest.Index) ocispec.Descriptor {
	tb.Helper()
	var m struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(x.Manifest, &m); err != nil {
		tb.Fatalf("index manifest: %v", err)
	}
	return ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.Digest(x.Digest.String()), Size: int64(len(x.Manifest))}
}

// PushKeySignature signs subject in repo with k (`cosign sign --key`,
// tag scheme) and pushes the signature.
func PushKeySignature(tb testing.TB, u *upstreamtest.Upstream, repo string, subject ocispec.Descriptor, k *Key, opts ...PushOption) {
	tb.Helper()
	PushSignatures(tb, u, repo, subject.Digest, []Layer{SignKey(tb, k, Payload(u.Host+"/"+repo, subject.Digest))}, opts...)
}

// PushKeylessSignature signs subject in repo keylessly as identity from
// issuer (`cosign sign`, tag scheme, with its Rekor bundle) and pushes
// the signature.
func (vs *VirtualSigstore) PushKeylessSignature(tb testing.TB, u *upstreamtest.Upstream, repo string, subject ocispec.Descriptor, identity, issuer string, opts ...PushOption) {
	tb.Helper()
	PushSignatures(tb, u, repo, subject.Digest, []Layer{vs.SignKeyless(tb, identity, issuer, Payload(u.Host+"/"+repo, subject.Digest))}, opts...)
}

// PushBundle makes a v0.3 bundle about subject (o.Subject is set from it)
// and pushes it as cosign v3 does, as a referrer of subject. It returns
// the bundle artifact's descriptor, for PushFallbackIndex.
func (vs *VirtualSigstore) PushBundle(tb testing.TB, u *upstreamtest.Upstream, repo string, subject ocispec.Descriptor, o BundleOptions, opts ...PushOption) ocispec.Descriptor {
	tb.Helper()
	o.Subject = subject.Digest
	b := vs.BundleV3(tb, o)
	return PushArtifact(tb, u, repo, "", BundleArtifact(tb, subject, b, o.PredicateType), opts...)
}
