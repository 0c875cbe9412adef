package gate_test

import (
	"net/http"
	"os"
	"testing"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify/notation"
	"github.com/airlock-registry/airlock/verify/notation/notationtest"
	"github.com/airlock-registry/airlock/verify/signature"
	"github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

// A Notation signature is found among the referrers and checked on the
// first pull: the verifier reads the image's own manifest (Notation signs
// its descriptor), which airlock has not decided yet.
func TestNotationSignatureOnThePullPath(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	good := up.PushImage(t, "vendor/app", "good", 256, 1)
	unsigned := up.PushImage(t, "vendor/app", "unsigned", 256, 1)
	sig, pki := notationtest.Sign(t, signaturetest.Subject(t, good), notation.MediaTypeJWS)
	notationtest.Push(t, up, "vendor/app", sig)

	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	trust := config.NotationTrust{TrustStore: []string{pki.WriteCA(t)}, TrustedIdentities: []string{pki.Identity()}}
	sc := config.Signature{Notation: &trust, MaxSignatures: 16, MaxBytes: 4 << 20}
	pols := []config.Policy{{Name: "hcl-notation", Match: []string{"hcl/*"}, Mode: config.ModeEnforce, Signature: &sc}}
	set, err := policy.Compile(pols, os.ReadFile, func(name string, c config.Signature) (policy.SignatureCheck, error) {
		nv, err := notation.New(*c.Notation, os.ReadFile)
		if err != nil {
			return nil, err
		}
		return signature.New(name, c, os.ReadFile, signature.Options{Notation: nv})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.gate.SetPolicies(t.Context(), set); err != nil {
		t.Fatal(err)
	}

	h.wantStatus(manifestPath(repo, "good"), http.StatusOK)
	if ev := h.image(repo, good.Digest).Verdict.Signatures; len(ev) != 1 || !ev[0].Verified || ev[0].Kind != "notation" {
		t.Fatalf("evidence %+v, want a verified Notation signature", ev)
	}
	h.wantStatus(manifestPath(repo, "unsigned"), http.StatusForbidden, "policy hcl-notation", "no signature found")
	if img := h.image(repo, unsigned.Digest); img.State != metadata.StateQuarantined {
		t.Fatalf("unsigned image: %+v", img)
	}
}
