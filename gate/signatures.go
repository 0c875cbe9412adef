package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Verify runs one policy's signature check on the image repo@d. It
// returns evidence when it could decide, and an error when it could not
// (the upstream unreachable): the pull is then asked to retry, and nothing
// is recorded.
type Verify func(ctx context.Context, check policy.SignatureCheck, repo string, d digest.Digest, mediaType string) (metadata.SignatureEvidence, error)

// errUnchecked wraps a signature check that could not run.
type errUnchecked struct{ err error }

func (e errUnchecked) Error() string { return e.err.Error() }
func (e errUnchecked) Unwrap() error { return e.err }

// gather returns the signature evidence of every policy under set that
// matches repo and checks signatures: what have holds under the check's
// current trust, else a fresh check. Concurrent first pulls of one image
// share one check.
func (g *Gate) gather(ctx context.Context, set *policy.Set, repo string, d digest.Digest, mediaType string,
	have []metadata.SignatureEvidence) ([]metadata.SignatureEvidence, error) {
	var out []metadata.SignatureEvidence
	for _, p := range set.Matching(repo) {
		check := p.Signature()
		if check == nil {
			continue
		}
		hash := check.Hash()
		if i := indexEvidence(have, p.Name, hash); i >= 0 {
			out = append(out, have[i])
			continue
		}
		if g.verify == nil {
			return nil, errUnchecked{fmt.Errorf("policy %s requires signatures, and no verifier is configured", p.Name)}
		}
		key := p.Name + "\x00" + hash + "\x00" + imageKey(repo, d)
		v, err, _ := g.flights.Do(key, func() (any, error) {
			return g.verify(context.WithoutCancel(ctx), check, repo, d, mediaType)
		})
		if err != nil {
			return nil, errUnchecked{fmt.Errorf("checking the signatures of %s for policy %s: %w", imageKey(repo, d), p.Name, err)}
		}
		ev := v.(metadata.SignatureEvidence)
		ev.Policy, ev.Hash = p.Name, hash
		out = append(out, ev)
	}
	return out, nil
}

func indexEvidence(evs []metadata.SignatureEvidence, policyName, hash string) int {
	for i, ev := range evs {
		if ev.Policy == policyName && ev.Hash == hash {
			return i
		}
	}
	return -1
}

// Media types of signature and attestation content: a manifest whose
// every layer is one of them cannot be run, so policies do not apply to it.
var signatureLayerTypes = map[string]bool{
	"application/vnd.dev.cosign.simplesigning.v1+json":     true,
	"application/vnd.dsse.envelope.v1+json":                true,
	"application/vnd.dev.sigstore.bundle+json;version=0.1": true,
	"application/vnd.dev.sigstore.bundle+json;version=0.2": true,
	"application/vnd.dev.sigstore.bundle.v0.3+json":        true,
	"application/jose+json":                                true,
	"application/cose":                                     true,
}

// Bounds on what counts as a signature artifact: signatures are small.
const (
	maxSignatureLayers    = 64
	maxSignatureBytes     = 16 << 20
	maxSignatureConfigLen = 64 << 10
)

// signatureArtifact returns metadata.ArtifactSignature when the manifest
// is a signature or attestation artifact (cosign's tag-scheme signatures
// and attestations, Sigstore bundles, Notation signatures), else "".
func signatureArtifact(mediaType string, body []byte) string {
	var m struct {
		MediaType    string `json:"mediaType"`
		ArtifactType string `json:"artifactType"`
		Config       struct {
			MediaType string `json:"mediaType"`
			Size      int64  `json:"size"`
		} `json:"config"`
		Layers []struct {
			MediaType string `json:"mediaType"`
			Size      int64  `json:"size"`
		} `json:"layers"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(body, &m) != nil || m.Manifests != nil || len(m.Layers) == 0 || len(m.Layers) > maxSignatureLayers ||
		m.Config.Size < 0 || m.Config.Size > maxSignatureConfigLen {
		return ""
	}
	var total int64
	for _, l := range m.Layers {
		if !signatureLayerTypes[l.MediaType] || l.Size < 0 {
			return ""
		}
		total += l.Size
	}
	if total > maxSignatureBytes {
		return ""
	}
	return metadata.ArtifactSignature
}

// artifactSubject is the image a signature artifact signs: its manifest's
// subject, else the digest its tag-scheme tag names
// ("sha256-<hex>.sig", ".att", or the referrers fallback "sha256-<hex>").
// An artifact without one is judged as an image.
func artifactSubject(body []byte, tag string) digest.Digest {
	var m struct {
		Subject *struct {
			Digest digest.Digest `json:"digest"`
		} `json:"subject"`
	}
	if json.Unmarshal(body, &m) == nil && m.Subject != nil && m.Subject.Digest.Validate() == nil {
		return m.Subject.Digest
	}
	t := strings.TrimSuffix(strings.TrimSuffix(tag, ".sig"), ".att")
	alg, hex, ok := strings.Cut(t, "-")
	if !ok {
		return ""
	}
	if d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex); d.Validate() == nil {
		return d
	}
	return ""
}

// isUnchecked reports whether err is a signature check that could not run.
func isUnchecked(err error) bool {
	var u errUnchecked
	return errors.As(err, &u)
}
