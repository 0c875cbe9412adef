package gate_test

import (
	"context"
	"errors"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/policy"
	"github.com/airlock-registry/airlock/proxy"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify/signature"
	"github.com/airlock-registry/airlock/verify/signature/signaturetest"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
)

// A signature artifact is served to clients only while the image it
// signs is servable. An artifact that "signs" another artifact must not
// borrow that artifact's approval: artifacts are approved on sight, so a
// chain of them would serve any signature-shaped blobs of an image
// airlock never served.
func TestSignatureArtifactChainServesNothingUnserved(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	ok := up.PushImage(t, "vendor/app", "ok", 256, 1)
	never := up.PushImage(t, "vendor/app", "never", 64, 1)
	payload := up.PushImage(t, "vendor/app", "payload", 256, 1)
	payload2 := up.PushImage(t, "vendor/app", "payload2", 256, 1)
	payload3 := up.PushImage(t, "vendor/app", "payload3", 256, 1)
	h := newHarness(t, up, t.TempDir(), ok.Digest.String()+"\n")
	h.wantStatus(manifestPath(repo, "ok"), http.StatusOK)

	// A: a "signature" of an image airlock never served. Refused, but
	// recorded as an artifact.
	a, atag := pushFakeSignature(t, up, "vendor/app", payload.Layers[0], never.Digest)
	h.wantStatus(manifestPath(repo, atag), http.StatusForbidden, "which airlock has not served")
	// B: a "signature" of A, carrying other blobs.
	b, btag := pushFakeSignature(t, up, "vendor/app", payload2.Layers[0], mustHash(t, a))
	h.wantStatus(manifestPath(repo, btag), http.StatusForbidden, "which airlock has not served")
	h.wantStatus(blobPath(repo, payload2.Layers[0]), http.StatusForbidden, "DENIED")

	// A chain that ends at a servable image is served.
	s1, s1tag := pushFakeSignature(t, up, "vendor/app", payload3.Layers[0], ok.Digest)
	h.wantStatus(manifestPath(repo, s1tag), http.StatusOK)
	_, s2tag := pushFakeSignature(t, up, "vendor/app", never.Layers[0], mustHash(t, s1))
	h.wantStatus(manifestPath(repo, s2tag), http.StatusOK)

	// Tags can make a loop: A's tag names B, B's names A.
	_, loopTag := pushFakeSignature(t, up, "vendor/app", payload.Layers[0], mustHash(t, b))
	h.wantStatus(manifestPath(repo, loopTag), http.StatusForbidden, "chain of more than")
	h.wantStatus(manifestPath(repo, btag), http.StatusForbidden, "chain of more than")
	h.wantStatus(blobPath(repo, payload2.Layers[0]), http.StatusForbidden, "DENIED")
}

// A policy reload while a first pull's signatures are being checked: the
// image must be decided under the new policies, not recorded under the
// ones the check started with (an audit policy switched to enforce would
// otherwise leave an unsigned image approved for good).
func TestPolicyReloadDuringFirstVerification(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	key := signaturetest.NewKey(t, signaturetest.ECDSA)
	unsigned := up.PushImage(t, "vendor/app", "unsigned", 256, 1)
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	keys := []string{key.WritePublic(t, dir)}
	h.signed(config.ModeAudit, keys, nil, "")

	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(_ context.Context, d digest.Digest) error {
		if d.String() != unsigned.Digest.String() {
			return nil
		}
		once.Do(func() {
			close(started)
			<-release
		})
		return nil
	}
	h.verifying.Store(&hook)
	done := make(chan int)
	go func() {
		code, _ := h.get(manifestPath(repo, "unsigned"))
		done <- code
	}()
	<-started
	h.signed(config.ModeEnforce, keys, nil, "")
	close(release)
	if code := <-done; code != http.StatusForbidden {
		t.Errorf("the pull that straddled the reload got %d, want 403 under the new (enforcing) policy", code)
	}
	h.wantStatus(manifestPath(repo, "unsigned"), http.StatusForbidden, "no signature found")
	if img := h.image(repo, unsigned.Digest); img.State != metadata.StateQuarantined {
		t.Fatalf("image decided under the old policies: %+v", img)
	}
}

// An audit policy serves whatever its signature check finds; a check that
// cannot run (the upstream sends a corrupt signature) must not turn it
// into a refusal either.
func TestAuditPolicyServesWhenSignaturesCannotBeChecked(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	key := signaturetest.NewKey(t, signaturetest.ECDSA)
	img := up.PushImage(t, "vendor/app", "flaky", 256, 1)
	d := digest.Digest(img.Digest.String())
	a := signaturetest.PushSignatures(t, up, "vendor/app", d,
		[]signaturetest.Layer{signaturetest.SignKey(t, key, signaturetest.Payload(up.Host+"/vendor/app", d))})
	up.Tamper(mustHash(t, digest.FromBytes(a.Blobs[0])))
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeAudit, []string{key.WritePublic(t, dir)}, nil, "")
	h.wantStatus(manifestPath(repo, "flaky"), http.StatusOK)
	h.wantStatus(blobPath(repo, img.Layers[0]), http.StatusOK)
}

// An upstream that stalls while its signatures are read holds neither the
// pull nor the check for ever: past the gate's bound the pull is asked to
// retry, and nothing is recorded.
func TestStalledSignatureCheckIsBounded(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	key := signaturetest.NewKey(t, signaturetest.ECDSA)
	img := up.PushImage(t, "vendor/app", "slow", 256, 1)
	dir := t.TempDir()
	h := newHarnessWith(t, up, dir, "", func(o *gate.Options) { o.VerifyTimeout = 200 * time.Millisecond })
	h.signed(config.ModeEnforce, []string{key.WritePublic(t, dir)}, nil, "")
	stall := func(ctx context.Context, _ digest.Digest) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Second):
			return errors.New("the signature check was not bounded")
		}
	}
	h.verifying.Store(&stall)
	start := time.Now()
	h.wantStatus(manifestPath(repo, "slow"), http.StatusForbidden, "could not be checked yet", "deadline exceeded")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the pull waited %s for a stalled check", took)
	}
	if _, err := h.meta.Image(t.Context(), repo, digest.Digest(img.Digest.String())); err == nil {
		t.Error("an image whose signature check stalled was recorded")
	}
}

// A platform pulled by digest before its signed index is refused (it is
// not signed itself), and served with its layers once the index is.
func TestPlatformPulledBeforeItsSignedIndex(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/multi"
	up := upstreamtest.New(t, upstreamtest.Options{})
	key := signaturetest.NewKey(t, signaturetest.ECDSA)
	idx := up.PushIndex(t, "vendor/multi", "1", 128, 1)
	signaturetest.PushKeySignature(t, up, "vendor/multi", signaturetest.IndexSubject(t, idx), key)
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeEnforce, []string{key.WritePublic(t, dir)}, nil, "")
	arm, _ := idx.Image("arm64")
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusForbidden, "no signature found")
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusForbidden, "DENIED")
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	h.wantStatus(manifestPath(repo, arm.Digest.String()), http.StatusOK)
	h.wantStatus(blobPath(repo, arm.Layers[0]), http.StatusOK)
}

// An admin's rescan that straddles a policy reload records the evidence
// of the policies in force, not of those its check started under (which
// the new policies would not find, leaving the image pending for good).
func TestRescanDuringPolicyReload(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	k1, k2 := signaturetest.NewKey(t, signaturetest.ECDSA), signaturetest.NewKey(t, signaturetest.ECDSA)
	img := up.PushImage(t, "vendor/app", "1", 256, 1)
	signaturetest.PushKeySignature(t, up, "vendor/app", signaturetest.Subject(t, img), k1)
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeEnforce, []string{k1.WritePublic(t, dir)}, nil, "")
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)

	started, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	hook := func(context.Context, digest.Digest) error {
		if first.CompareAndSwap(false, true) {
			close(started)
			<-release
		}
		return nil
	}
	h.verifying.Store(&hook)
	d := digest.Digest(img.Digest.String())
	done := make(chan error)
	go func() {
		_, err := h.gate.Rescan(context.Background(), repo, d, "admin:bob")
		done <- err
	}()
	<-started
	h.signed(config.ModeEnforce, []string{k2.WritePublic(t, t.TempDir())}, nil, "")
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := h.image(repo, img.Digest); got.State != metadata.StateQuarantined {
		t.Fatalf("after a rescan across a reload: %s %+v, want quarantined under the new key", got.State, got.Verdict)
	}
	h.wantStatus(manifestPath(repo, "1"), http.StatusForbidden, "key the policy does not list")
}

// Two reloads in flight (SIGHUP while the gate retries an earlier one):
// the older must not record its decision over the newer one's.
func TestOverlappingPolicyReloads(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	k1, k2 := signaturetest.NewKey(t, signaturetest.ECDSA), signaturetest.NewKey(t, signaturetest.ECDSA)
	img := up.PushImage(t, "vendor/app", "1", 256, 1)
	signaturetest.PushKeySignature(t, up, "vendor/app", signaturetest.Subject(t, img), k1)
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeEnforce, []string{k1.WritePublic(t, dir)}, nil, "")
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)

	started, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	hook := func(context.Context, digest.Digest) error {
		if first.CompareAndSwap(false, true) {
			close(started)
			<-release
		}
		return nil
	}
	h.verifying.Store(&hook)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.signed(config.ModeEnforce, []string{k2.WritePublic(t, t.TempDir())}, nil, "")
	}()
	<-started
	// The newer reload trusts k1 again (from another file: another hash).
	h.signed(config.ModeEnforce, []string{k1.WritePublic(t, t.TempDir())}, nil, "")
	close(release)
	<-done
	if got := h.image(repo, img.Digest); got.State != metadata.StateApproved {
		t.Fatalf("after overlapping reloads: %s %+v, want approved under the newer policies", got.State, got.Verdict)
	}
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
}

// An image that also carries an artifact which is not a signature (an
// SBOM pushed without an artifactType, which the referrers API then lists
// by its empty config's media type) is decided by its signatures: the
// verifier reads that manifest to learn its type, and airlock refusing to
// hand it over must not leave the image unchecked for ever.
func TestUntypedNonSignatureReferrer(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	key := signaturetest.NewKey(t, signaturetest.ECDSA)
	img := up.PushImage(t, "vendor/app", "1", 256, 1)
	subject := signaturetest.Subject(t, img)
	signaturetest.PushArtifact(t, up, "vendor/app", "", signaturetest.ReferrerArtifact(t, "", subject,
		"application/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3"}`), nil))
	signaturetest.PushKeySignature(t, up, "vendor/app", subject, key)
	unsigned := up.PushImage(t, "vendor/app", "2", 256, 1)
	signaturetest.PushArtifact(t, up, "vendor/app", "", signaturetest.ReferrerArtifact(t, "", signaturetest.Subject(t, unsigned),
		"application/spdx+json", []byte(`{"spdxVersion":"SPDX-2.3"}`), nil))
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeEnforce, []string{key.WritePublic(t, dir)}, nil, "")
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	h.wantStatus(manifestPath(repo, "2"), http.StatusForbidden, "is quarantined", "policy hcl-signed")
}

// A reload that changes the trust (a compromised key removed) while the
// upstream cannot be read: the images that needed the old key must not
// stay served until the upstream lets airlock check them again (a hostile
// one never would). They wait as pending, and are decided once it can.
func TestTrustChangeFailsClosedWhileSignaturesCannotBeRead(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	k1, k2 := signaturetest.NewKey(t, signaturetest.ECDSA), signaturetest.NewKey(t, signaturetest.ECDSA)
	img := up.PushImage(t, "vendor/app", "1", 256, 1)
	signaturetest.PushKeySignature(t, up, "vendor/app", signaturetest.Subject(t, img), k1)
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeEnforce, []string{k1.WritePublic(t, dir)}, nil, "")
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)
	h.wantStatus(blobPath(repo, img.Layers[0]), http.StatusOK)

	down := func(context.Context, digest.Digest) error { return errors.New("upstream unreachable") }
	h.verifying.Store(&down)
	keys := []string{k2.WritePublic(t, t.TempDir())}
	sig := config.Signature{Keys: keys, MaxSignatures: 16, MaxBytes: 4 << 20}
	set, err := policy.Compile([]config.Policy{{Name: "hcl-signed", Match: []string{"hcl/*"}, Mode: config.ModeEnforce, Signature: &sig}},
		os.ReadFile, func(name string, c config.Signature) (policy.SignatureCheck, error) {
			return signature.New(name, c, os.ReadFile, signature.Options{})
		})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.gate.SetPolicies(t.Context(), set); err == nil || !strings.Contains(err.Error(), "upstream unreachable") {
		t.Fatalf("SetPolicies = %v, want the check's failure reported", err)
	}
	h.wantStatus(manifestPath(repo, "1"), http.StatusForbidden, "retry shortly")
	h.wantStatus(blobPath(repo, img.Layers[0]), http.StatusForbidden, "DENIED")

	// Once the signatures can be read, the retry decides it.
	h.verifying.Store(nil)
	if _, err := h.gate.SetPolicies(t.Context(), set); err != nil {
		t.Fatal(err)
	}
	h.wantStatus(manifestPath(repo, "1"), http.StatusForbidden, "is quarantined", "key the policy does not list")
}

// A manifest counts as a signature artifact only while its layers are
// small; sizes that overflow when added up do not make it small.
func TestSignatureArtifactSizesDoNotOverflow(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.Options{})
	ok := up.PushImage(t, "vendor/app", "ok", 64, 1)
	h := newHarness(t, up, t.TempDir(), ok.Digest.String()+"\n")
	h.wantStatus(manifestPath("hcl/vendor/app", "ok"), http.StatusOK)
	layer := func(size int64) string {
		return `{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":` + strconv.FormatInt(size, 10) +
			`,"digest":"` + digest.FromString(strconv.FormatInt(size, 10)).String() + `"}`
	}
	for _, tc := range []struct {
		name   string
		layers []string
	}{
		{"one huge layer", []string{layer(1 << 40)}},
		{"sizes that wrap around", []string{layer(1 << 40), layer(math.MaxInt64 - 1<<40 + 1), layer(math.MaxInt64)}},
	} {
		body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"` + digest.FromString("{}").String() + `"},` +
			`"layers":[` + strings.Join(tc.layers, ",") + `]}`)
		d := digest.FromBytes(body)
		dec, err := h.gate.Admit(t.Context(), proxy.Subject{Upstream: "hcl", Repository: "vendor/app", Tag: "sha256-" + ok.Digest.Hex + ".sig",
			Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body})
		if err != nil {
			t.Fatal(err)
		}
		if dec.Allow || strings.Contains(dec.Message, "is a signature of") {
			t.Errorf("%s: %+v, want it judged as an image (and refused: it is not pinned)", tc.name, dec)
		}
	}
}

// A restart with other trust (a key removed from the file while airlock
// was down, instead of a SIGHUP) decides the recorded images again: their
// evidence is of the old trust.
func TestRestartWithChangedTrustDecidesAgain(t *testing.T) {
	t.Parallel()
	const repo = "hcl/vendor/app"
	up := upstreamtest.New(t, upstreamtest.Options{})
	k1, k2 := signaturetest.NewKey(t, signaturetest.ECDSA), signaturetest.NewKey(t, signaturetest.ECDSA)
	img := up.PushImage(t, "vendor/app", "1", 256, 1)
	signaturetest.PushKeySignature(t, up, "vendor/app", signaturetest.Subject(t, img), k1)
	dir := t.TempDir()
	h := newHarness(t, up, dir, "")
	h.signed(config.ModeEnforce, []string{k1.WritePublic(t, dir)}, nil, "")
	h.wantStatus(manifestPath(repo, "1"), http.StatusOK)

	sig := config.Signature{Keys: []string{k2.WritePublic(t, t.TempDir())}, MaxSignatures: 16, MaxBytes: 4 << 20}
	set, err := policy.Compile([]config.Policy{{Name: "hcl-signed", Match: []string{"hcl/*"}, Mode: config.ModeEnforce, Signature: &sig}},
		os.ReadFile, func(name string, c config.Signature) (policy.SignatureCheck, error) {
			return signature.New(name, c, os.ReadFile, signature.Options{})
		})
	if err != nil {
		t.Fatal(err)
	}
	c := &content{p: h.proxy}
	g2, err := gate.New(t.Context(), gate.Options{Store: h.meta, Content: c, Policies: set, Now: h.clock.Now,
		Verify: func(ctx context.Context, check policy.SignatureCheck, repo string, d digest.Digest, mt string) (metadata.SignatureEvidence, error) {
			return check.(*signature.Verifier).Verify(ctx, h.proxy.Fetcher(repo), d, mt)
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { g2.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	body, _, _, err := h.proxy.Fetcher(repo).Manifest(t.Context(), img.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		dec, err := g2.Admit(t.Context(), proxy.Subject{Upstream: "hcl", Repository: "vendor/app",
			Digest: digest.Digest(img.Digest.String()), MediaType: "application/vnd.docker.distribution.manifest.v2+json", Body: body})
		if err != nil {
			t.Fatal(err)
		}
		if !dec.Allow {
			if !strings.Contains(dec.Message, "key the policy does not list") {
				t.Fatalf("refused with %q, want the new key's verdict", dec.Message)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("after a restart with the old key removed, the image it signed is still served")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
