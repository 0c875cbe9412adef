package gate_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify/signature"
	"github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

// signed puts a signature policy over hcl/* on h, trusting keys and, with
// vs, keyless signatures by identity.
func (h *harness) signed(mode string, keys []string, vs *signaturetest.VirtualSigstore, identity string) {
	h.t.Helper()
	sig := config.Signature{Keys: keys, MaxSignatures: 16, MaxBytes: 4 << 20}
	if vs != nil {
		sig.TrustedRoot = vs.WriteTrustedRoot(h.t, h.dir)
		sig.Keyless = []config.KeylessIdentity{{Issuer: "https://issuer.test", Subject: identity}}
	}
	pols := []config.Policy{{Name: "hcl-signed", Match: []string{"hcl/*"}, Mode: mode, Signature: &sig}}
	set, err := policy.Compile(pols, os.ReadFile, func(name string, c config.Signature) (policy.SignatureCheck, error) {
		return signature.New(name, c, os.ReadFile, signature.Options{})
	})
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.gate.SetPolicies(h.t.Context(), set); err != nil {
		h.t.Fatal(err)
	}
}

func TestSignaturePolicy(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	key, other := signaturetest.NewKey(t, signaturetest.ECDSA), signaturetest.NewKey(t, signaturetest.Ed25519)
	vs := signaturetest.NewVirtualSigstore(t)
	good := up.PushImage(t, "vendor/app", "good", 256, 1)
	signaturetest.PushKeySignature(t, up, "vendor/app", signaturetest.Subject(t, good), key)
	keyless := up.PushImage(t, "vendor/app", "keyless", 256, 1)
	vs.PushBundle(t, up, "vendor/app", signaturetest.Subject(t, keyless), signaturetest.BundleOptions{
		Identity: "https://github.com/vendor/app/.github/workflows/release.yml@refs/tags/v1", Issuer: "https://issuer.test"})
	wrongKey := up.PushImage(t, "vendor/app", "wrongkey", 256, 1)
	signaturetest.PushKeySignature(t, up, "vendor/app", signaturetest.Subject(t, wrongKey), other)
	unsigned := up.PushImage(t, "vendor/app", "unsigned", 256, 1)
	idx := up.PushIndex(t, "vendor/multi", "1", 128, 1)
	signaturetest.PushKeySignature(t, up, "vendor/multi", signaturetest.IndexSubject(t, idx), key)

	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeEnforce, []string{key.WritePublic(t, dir)}, vs,
		"https://github.com/vendor/app/.github/workflows/release.yml@refs/tags/v1")
	const repo = "hcl/vendor/app"

	// Signed with the key, and keyless with a v3 bundle: served.
	h.wantStatus(manifestPath(repo, "good"), http.StatusOK)
	h.wantStatus(blobPath(repo, good.Layers[0]), http.StatusOK)
	h.wantStatus(manifestPath(repo, "keyless"), http.StatusOK)
	img := h.image(repo, good.Digest)
	if img.State != metadata.StateApproved || len(img.Verdict.Signatures) != 1 || !img.Verdict.Signatures[0].Verified ||
		img.Verdict.Signatures[0].Kind != "key" || img.Verdict.Signatures[0].KeyID != key.ID() {
		t.Fatalf("signed image: %+v", img.Verdict)
	}
	if ev := h.image(repo, keyless.Digest).Verdict.Signatures; len(ev) != 1 || ev[0].Kind != "keyless" || !strings.Contains(ev[0].Identity, "vendor/app") {
		t.Fatalf("keyless evidence: %+v", ev)
	}

	// Unsigned, or signed by a key the policy does not list: refused with
	// a signature reason the person at docker pull can read.
	h.wantStatus(manifestPath(repo, "unsigned"), http.StatusForbidden, "DENIED", "policy hcl-signed", "no signature found")
	h.wantStatus(blobPath(repo, unsigned.Layers[0]), http.StatusForbidden, "DENIED")
	h.wantStatus(manifestPath(repo, "wrongkey"), http.StatusForbidden, "policy hcl-signed", "key the policy does not list")
	img = h.image(repo, unsigned.Digest)
	if img.State != metadata.StateQuarantined || len(img.Reasons) != 1 || img.Reasons[0].Type != metadata.ReasonSignature ||
		img.Reasons[0].Policy != "hcl-signed" {
		t.Fatalf("unsigned image: %+v", img)
	}

	// A warm pull does no crypto.
	before := h.verifies.Load()
	for range 5 {
		h.wantStatus(manifestPath(repo, "good"), http.StatusOK)
		h.wantStatus(manifestPath(repo, good.Digest.String()), http.StatusOK)
	}
	if n := h.verifies.Load() - before; n != 0 {
		t.Errorf("warm pulls ran %d signature checks", n)
	}

	// An index's signature covers the platforms it lists.
	arm, _ := idx.Image("arm64")
	h.wantStatus(manifestPath("hcl/vendor/multi", "1"), http.StatusOK)
	h.wantStatus(manifestPath("hcl/vendor/multi", arm.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath("hcl/vendor/multi", arm.Layers[0]), http.StatusOK)

	// A tag that moves upstream to an unsigned digest is refused, though
	// the old digest was approved.
	moved := up.PushImage(t, "vendor/app", "good", 256, 1)
	h.clock.advance(2 * time.Minute)
	h.wantStatus(manifestPath(repo, moved.Digest.String()), http.StatusForbidden, "no signature found")

	// A changed key set decides again: with the key gone, the image that
	// needed it is quarantined and its layers withdrawn.
	before = h.verifies.Load()
	h.signed(config.ModeEnforce, []string{other.WritePublic(t, filepath.Join(dir))}, nil, "")
	if h.verifies.Load() == before {
		t.Error("a changed key set ran no signature check")
	}
	h.wantStatus(manifestPath(repo, good.Digest.String()), http.StatusForbidden, "key the policy does not list")
	h.wantStatus(blobPath(repo, good.Layers[0]), http.StatusForbidden, "DENIED")
	h.wantStatus(manifestPath(repo, wrongKey.Digest.String()), http.StatusOK)
	if recs := h.audit(); recs[len(recs)-1].Action != "redecide" {
		t.Errorf("last audit record %+v, want a redecision", recs[len(recs)-1])
	}
}

func TestSignaturePolicyAuditModeAndOutage(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	key := signaturetest.NewKey(t, signaturetest.RSA)
	unsigned := up.PushImage(t, "vendor/app", "unsigned", 256, 1)
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeAudit, []string{key.WritePublic(t, dir)}, nil, "")
	const repo = "hcl/vendor/app"

	// Audit mode serves, and records the finding.
	h.wantStatus(manifestPath(repo, "unsigned"), http.StatusOK)
	img := h.image(repo, unsigned.Digest)
	if img.State != metadata.StateApproved || len(img.Reasons) != 1 || img.Reasons[0].Mode != config.ModeAudit ||
		img.Reasons[0].Type != metadata.ReasonSignature {
		t.Fatalf("audit mode: %+v", img)
	}

	// A signature that cannot be read (the upstream sends corrupt bytes):
	// the pull is asked to retry, nothing is recorded, and once it can be
	// read the image is decided.
	h.signed(config.ModeEnforce, []string{key.WritePublic(t, dir)}, nil, "")
	flaky := up.PushImage(t, "vendor/app", "flaky", 256, 1)
	a := signaturetest.PushSignatures(t, up, "vendor/app", digest.Digest(flaky.Digest.String()),
		[]signaturetest.Layer{signaturetest.SignKey(t, key, signaturetest.Payload(up.Host+"/vendor/app", digest.Digest(flaky.Digest.String())))})
	payload, err := v1.NewHash(digest.FromBytes(a.Blobs[0]).String())
	if err != nil {
		t.Fatal(err)
	}
	up.Tamper(payload)
	h.wantStatus(manifestPath(repo, "flaky"), http.StatusForbidden, "could not be checked yet", "retry shortly")
	if _, err := h.meta.Image(t.Context(), repo, digest.Digest(flaky.Digest.String())); err == nil {
		t.Error("an image whose signatures could not be read was recorded")
	}
	up.Untamper(payload)
	// The failed transfer may still be winding down: a client retries, as
	// Retry-After asks.
	for i := 0; ; i++ {
		if code, _ := h.get(manifestPath(repo, "flaky")); code == http.StatusOK {
			break
		} else if i == 50 {
			t.Fatalf("after the signature could be read again the pull still gets %d", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if img := h.image(repo, flaky.Digest); img.State != metadata.StateApproved {
		t.Errorf("after a retry: %+v", img)
	}
}

// TestCopiedSignatureKeepsTheOriginalServed checks that one signature
// manifest under the tags of two images (a signature copied onto another
// image) answers for each tag's own image: a client still gets the signed
// image's signature after the copy was read, and not the copy.
func TestCopiedSignatureKeepsTheOriginalServed(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	key := signaturetest.NewKey(t, signaturetest.ECDSA)
	signed := up.PushImage(t, "vendor/app", "signed", 256, 1)
	copied := up.PushImage(t, "vendor/app", "copied", 256, 1)
	sig := signaturetest.SignatureManifest(t, signaturetest.SignKey(t, key,
		signaturetest.Payload(up.Host+"/vendor/app", digest.Digest(signed.Digest.String()))))
	signedTag := signaturetest.LegacyTag(digest.Digest(signed.Digest.String()))
	copiedTag := signaturetest.LegacyTag(digest.Digest(copied.Digest.String()))
	signaturetest.PushArtifact(t, up, "vendor/app", signedTag, sig)
	signaturetest.PushArtifact(t, up, "vendor/app", copiedTag, sig)

	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeEnforce, []string{key.WritePublic(t, dir)}, nil, "")
	const repo = "hcl/vendor/app"
	h.wantStatus(manifestPath(repo, "signed"), http.StatusOK)
	h.wantStatus(manifestPath(repo, "copied"), http.StatusForbidden, "policy hcl-signed", "names another image")

	h.wantStatus(manifestPath(repo, signedTag), http.StatusOK)
	h.wantStatus(manifestPath(repo, copiedTag), http.StatusForbidden, "is a signature of "+repo+"@"+copied.Digest.String(), "which is quarantined")
	h.wantStatus(manifestPath(repo, signedTag), http.StatusOK)
}
