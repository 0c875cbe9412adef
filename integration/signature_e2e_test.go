package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/integration/airlocktest"
	"github.com/airlock-registry/airlock/integration/clients"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/verify/notation/notationtest"
	st "github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

// The signing identities of TestSignaturePoliciesWithClients.
const (
	sigIssuer   = "https://token.actions.githubusercontent.com"
	sigIdentity = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.0.0"
	// sigRegistry is the name containerd pulls by; hosts.toml sends it to
	// airlock with ?ns=registry.sig.test, which airlock routes to upstream sig.
	sigRegistry = "registry.sig.test"
)

// sigEnv is one airlock under signature policies, the upstream it pulls
// from and the private containerd and dockerd that pull through it.
type sigEnv struct {
	t        *testing.T
	al       *airlocktest.Airlock
	up       *upstreamtest.Upstream
	ctd      *clients.Containerd
	dkd      *clients.Dockerd
	hostsDir string
	// q lends the quarantine test's CLI runner and log waiter.
	q *quarantineEnv
}

// TestSignaturePoliciesWithClients pulls through the built binary with
// real containerd and docker under three signature policies: a cosign key
// (tag scheme), a keyless identity with cosign v3 bundles checked against
// a trusted_root.json on disk, and Notation. Signed images (one of them a
// multi-arch index signed on the index, whose platform manifests
// containerd fetches by digest) pull with both clients; an unsigned image
// and one carrying a signature copied from another image are refused by
// both with 403 DENIED and a message naming the policy and the reason,
// and are listed by `airlock quarantine list` with a signature reason.
// Signature artifacts themselves pull through airlock without a
// signature. A tag moved upstream to an unsigned digest is refused once
// its TTL ends. Nothing leaves loopback: airlock's proxy variables point
// at a trap that must stay unasked, and the upstream saw requests for
// the repositories involved only.
func TestSignaturePoliciesWithClients(t *testing.T) {
	t.Parallel()
	start := time.Now()
	ctx := t.Context()
	up := upstreamtest.New(t, upstreamtest.Options{})
	dir := t.TempDir()

	// Key-based, cosign's tag scheme: one signed image, one unsigned, one
	// whose .sig tag holds the signed image's signature manifest byte for
	// byte, and a tag that starts on a signed image.
	key := st.NewKey(t, st.ECDSA)
	keyed := up.PushImage(t, "team/keyed", "1.0", 16<<10, 1)
	keyedSig := st.SignatureManifest(t, st.SignKey(t, key, st.Payload(up.Host+"/team/keyed", digest.Digest(keyed.Digest.String()))))
	st.PushArtifact(t, up, "team/keyed", st.LegacyTag(digest.Digest(keyed.Digest.String())), keyedSig)
	unsigned := up.PushImage(t, "team/keyed", "unsigned", 16<<10, 1)
	copied := up.PushImage(t, "team/keyed", "copied", 16<<10, 1)
	st.PushArtifact(t, up, "team/keyed", st.LegacyTag(digest.Digest(copied.Digest.String())), keyedSig)
	stable := up.PushImage(t, "team/keyed", "stable", 16<<10, 1)
	st.PushKeySignature(t, up, "team/keyed", st.Subject(t, stable), key)

	// Multi-arch, signed on the index only.
	multi := up.PushIndex(t, "team/multi", "1.0", 16<<10, 1)
	st.PushKeySignature(t, up, "team/multi", st.IndexSubject(t, multi), key)
	platform, ok := multi.Image(runtime.GOARCH)
	if !ok {
		t.Fatalf("the index has no %s image", runtime.GOARCH)
	}

	// Keyless, a cosign v3 bundle listed by the referrers API.
	vs := st.NewVirtualSigstore(t)
	keyless := up.PushImage(t, "team/keyless", "1.0", 16<<10, 1)
	bundle := vs.PushBundle(t, up, "team/keyless", st.Subject(t, keyless), st.BundleOptions{Identity: sigIdentity, Issuer: sigIssuer})

	// Notation, a JWS envelope listed by the referrers API. The signing
	// certificate names an OCSP responder and CRL off loopback: a
	// revocation check would land in the egress trap.
	pki := notationtest.NewPKI(t, notationtest.PKIOptions{RevocationURL: "http://revocation.airlock.test/ca"})
	notary := up.PushImage(t, "notary/app", "1.0", 16<<10, 1)
	notationtest.Push(t, up, "notary/app", pki.Sign(t, st.Subject(t, notary), "application/jose+json"))
	up.Reset() // from here on the upstream records airlock's requests only

	trap := newEgressTrap(t)
	serverTokens, cliToken := filepath.Join(dir, "admin-tokens"), filepath.Join(dir, "cli-token")
	const token = "alice-signatures-0123456789abcdef"
	for f, body := range map[string]string{serverTokens: "alice:" + token + "\n", cliToken: token + "\n"} {
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e := &sigEnv{t: t, up: up}
	e.al = e2eStart(t, airlocktest.Config{
		// The only upstream is on loopback; tags are re-resolved after 2s.
		Upstreams: []airlocktest.Upstream{{Name: "sig", URL: up.URL, Aliases: []string{sigRegistry},
			Retry: airlocktest.FastRetry(), TagTTL: "2s"}},
		Policies: []airlocktest.Policy{
			{Name: "team-signed", Match: []string{"sig/team/keyed", "sig/team/multi"}, Mode: "enforce",
				Signature: &airlocktest.Signature{Keys: []string{key.WritePublic(t, dir)}}},
			{Name: "team-keyless", Match: []string{"sig/team/keyless"}, Mode: "enforce",
				Signature: &airlocktest.Signature{
					Keyless:     []airlocktest.Keyless{{Issuer: sigIssuer, Subject: sigIdentity}},
					TrustedRoot: vs.WriteTrustedRoot(t, dir),
				}},
			{Name: "notary", Match: []string{"sig/notary/*"}, Mode: "enforce",
				Signature: &airlocktest.Signature{Notation: &airlocktest.Notation{
					TrustStore: []string{pki.WriteCA(t)}, TrustedIdentities: []string{pki.Identity()}}}},
		},
		AdminTokenFile: serverTokens,
		Env:            trap.env(),
	})
	e.q = &quarantineEnv{t: t, al: e.al}
	e.ctd = clients.StartContainerd(t)
	e.dkd = clients.StartDockerd(t, e.ctd)
	e.hostsDir = t.TempDir()
	if err := clients.WriteHostsDir(e.hostsDir, map[string]string{sigRegistry: e.al.URL}); err != nil {
		t.Fatal(err)
	}
	t.Logf("set up in %v", time.Since(start))

	// Signed images pull with both clients, their content as upstream's.
	e.pullOK("team/keyed", "1.0", keyed.Digest, keyed)
	e.pullOK("team/keyed", "stable", stable.Digest, stable)
	e.pullOK("team/keyless", "1.0", keyless.Digest, keyless)
	e.pullOK("team/multi", "1.0", multi.Digest, platform)
	e.ctrPullOK("notary/app", "1.0", notary.Digest, notary)

	// The tag moves upstream to an unsigned image while its old digest
	// stays approved; the next pull after the TTL must see the move.
	moved := up.PushImage(t, "team/keyed", "stable", 16<<10, 1)
	movedAt := time.Now()

	// The index's signature covers every platform it lists, also the
	// one no client asked for.
	for _, img := range multi.Images {
		e2ePullHTTP(t, up, e.al.URL+"/v2/sig/team/multi", img.Digest.String(), img)
	}

	// Unsigned, and signed with a signature made for another image:
	// refused by both clients with the policy and the reason.
	e.pullRefused("team/keyed", "unsigned", unsigned,
		"policy team-signed: no signature found (looked for "+st.LegacyTag(digest.Digest(unsigned.Digest.String())))
	e.pullRefused("team/keyed", "copied", copied,
		"policy team-signed: 1 signature found, not verified: it names another image ("+keyed.Digest.String()+")")

	// Clients (in-cluster verifiers) pull the signature artifacts
	// themselves through airlock; they need no signature of their own.
	// The same manifest under the copied image's tag, which airlock has
	// just read while refusing that image, answers for that image.
	e.pullArtifact("team/keyed", st.LegacyTag(digest.Digest(keyed.Digest.String())), keyedSig.Manifest)
	r := e2eMustGet(t, http.StatusForbidden, e.al.URL+"/v2/sig/team/keyed/manifests/"+st.LegacyTag(digest.Digest(copied.Digest.String())),
		"Accept", ocispec.MediaTypeImageManifest)
	if !strings.Contains(string(r.Body), "is a signature of sig/team/keyed@"+copied.Digest.String()+", which is quarantined") {
		t.Errorf("the copied image's signature tag through airlock: %s", r.Body)
	}
	skopeo := clients.NewSkopeo(t)
	raw, err := skopeo.Inspect(ctx, "docker://"+e.al.Host+"/sig/team/keyed:"+st.LegacyTag(digest.Digest(keyed.Digest.String())))
	if err != nil || raw != string(keyedSig.Manifest) {
		t.Errorf("skopeo inspect --raw of the signature through airlock: %v\n%s\nwant\n%s", err, raw, keyedSig.Manifest)
	}
	e.checkReferrers("team/keyless", keyless.Digest, bundle)

	// The moved tag, once its TTL has passed: refused by both clients.
	time.Sleep(time.Until(movedAt.Add(2500 * time.Millisecond)))
	e.pullRefused("team/keyed", "stable", moved,
		"policy team-signed: no signature found (looked for "+st.LegacyTag(digest.Digest(moved.Digest.String())))
	if r := e2eMustGet(t, http.StatusOK, e.al.URL+"/v2/sig/team/keyed/manifests/"+stable.Digest.String(), "Accept", manifestAccept); string(r.Body) != string(stable.Manifest) {
		t.Errorf("the approved old digest of stable changed through airlock")
	}

	// quarantine list -o json: the three refused images, each for a
	// signature reason of team-signed; nothing else.
	list := e.q.cliOK(nil, "quarantine", "list", "-o", "json", "--server", e.al.AdminURL, "--token-file", cliToken)
	e.checkSignatureQuarantine(list.stdout, map[v1.Hash]string{
		unsigned.Digest: "no signature found",
		copied.Digest:   "names another image",
		moved.Digest:    "no signature found",
	})

	// Nothing left loopback, and the upstream was asked for the four
	// repositories only.
	if got := trap.requests(); len(got) > 0 {
		t.Errorf("airlock made requests through its proxy (leaving loopback): %v", got)
	}
	e.checkUpstreamRequests("team/keyed", "team/keyless", "team/multi", "notary/app")
	t.Logf("took %v", time.Since(start))
}

func (e *sigEnv) ctrRef(repo, tag string) string { return sigRegistry + "/" + repo + ":" + tag }

func (e *sigEnv) dockerRef(repo, tag string) string { return e.al.Host + "/sig/" + repo + ":" + tag }

// ctrPullOK pulls repo:tag with containerd and checks that it resolved to
// want and holds every blob of img (the platform image, for an index).
func (e *sigEnv) ctrPullOK(repo, tag string, want v1.Hash, img upstreamtest.Image) {
	t, ctx := e.t, e.t.Context()
	t.Helper()
	ref := e.ctrRef(repo, tag)
	if out, err := e.ctd.Pull(ctx, e.hostsDir, ref); err != nil {
		t.Fatalf("ctr pull %s: %v\n%s", ref, err, out)
	}
	if got, err := e.ctd.ImageDigest(ctx, ref); err != nil || got != want.String() {
		t.Fatalf("containerd's %s is %q (%v), want %s", ref, got, err, want)
	}
	for _, b := range append(img.Blobs(), img.Digest) {
		if ok, err := e.ctd.HasContent(ctx, b.String()); err != nil || !ok {
			t.Fatalf("containerd lacks %s of %s after the pull (%v)", b, ref, err)
		}
	}
}

// pullOK pulls repo:tag with both clients: each must hold want with
// img's content.
func (e *sigEnv) pullOK(repo, tag string, want v1.Hash, img upstreamtest.Image) {
	t, ctx := e.t, e.t.Context()
	t.Helper()
	e.ctrPullOK(repo, tag, want, img)
	ref := e.dockerRef(repo, tag)
	if out, err := e.dkd.Pull(ctx, ref); err != nil {
		t.Fatalf("docker pull %s: %v\n%s", ref, err, out)
	}
	digests, err := e.dkd.RepoDigests(ctx, ref)
	if err != nil || !slices.Contains(digests, e.al.Host+"/sig/"+repo+"@"+want.String()) {
		t.Fatalf("docker's repo digests of %s = %v (%v), want %s", ref, digests, err, want)
	}
	// docker's image ID is the config's digest, checked against the
	// layers' diff IDs.
	id, err := e.dkd.Docker(ctx, "image", "inspect", "--format", "{{.Id}}", ref)
	if err != nil || strings.TrimSpace(id) != img.Config.String() {
		t.Fatalf("docker's image ID of %s = %q (%v), want the config digest %s", ref, id, err, img.Config)
	}
}

// pullRefused pulls repo:tag, which resolves to img, with both clients,
// which must fail with airlock's 403 DENIED naming the reason. docker
// prints the message; containerd's HEAD gets no body, so the message is
// checked in airlock's log line for it.
func (e *sigEnv) pullRefused(repo, tag string, img upstreamtest.Image, reason string) {
	t, ctx := e.t, e.t.Context()
	t.Helper()
	ref := "sig/" + repo + "@" + img.Digest.String()
	message := []string{ref + " is quarantined: ", reason, "An admin can see why with: airlock images show " + ref}

	logged := len(e.al.Logs())
	out, err := e.ctd.Pull(ctx, e.hostsDir, e.ctrRef(repo, tag))
	if err == nil {
		t.Fatalf("ctr pull %s succeeded; want a refusal for %q", e.ctrRef(repo, tag), reason)
	}
	if !strings.Contains(out, "403 Forbidden") {
		t.Errorf("ctr pull %s failed without airlock's 403:\n%s", e.ctrRef(repo, tag), out)
	}
	line := e.q.waitRequestLog(logged, func(l airlocktest.LogLine) bool {
		return l.Fields["method"] == http.MethodHead && l.Fields["reference"] == tag && l.Fields["ns"] == sigRegistry
	})
	if line.Fields["status"] != float64(http.StatusForbidden) || !containsAll(fmt.Sprint(line.Fields["error"]), message) {
		t.Errorf("airlock's log of containerd's refused HEAD of %s:%s lacks %q:\n%s", repo, tag, message, line.Raw)
	}

	out, err = e.dkd.Pull(ctx, e.dockerRef(repo, tag))
	if err == nil {
		t.Fatalf("docker pull %s succeeded; want a refusal for %q", e.dockerRef(repo, tag), reason)
	}
	if !strings.Contains(out, "denied: "+ref+" is quarantined") || !containsAll(out, message) {
		t.Errorf("docker pull %s does not print why it was refused (%q):\n%s", e.dockerRef(repo, tag), message, out)
	}

	// The answer itself: 403 with the OCI code DENIED and the message.
	r, err := e2eGet(ctx, e.al.URL+"/v2/sig/"+repo+"/manifests/"+tag, "Accept", manifestAccept)
	if err != nil || r.Status != http.StatusForbidden || !slices.Equal(e2eErrorCodes(r.Body), []string{"DENIED"}) || !containsAll(string(r.Body), message) {
		t.Errorf("GET %s:%s = %d %s (%v), want 403 DENIED with %q", repo, tag, r.Status, r.Body, err, message)
	}
	// Nor are its layers served through the repository.
	for _, b := range img.Layers {
		if r, err := e2eGet(ctx, e.al.URL+"/v2/sig/"+repo+"/blobs/"+b.String()); err != nil || r.Status < 400 {
			t.Errorf("layer %s of the refused %s:%s: %d (%v), want a refusal", b, repo, tag, r.Status, err)
		}
	}
}

// pullArtifact GETs the manifest repo:ref through airlock, which must be
// want, and each blob it references, which must match its digest.
func (e *sigEnv) pullArtifact(repo, ref string, want []byte) {
	t := e.t
	t.Helper()
	base := e.al.URL + "/v2/sig/" + repo
	r := e2eMustGet(t, http.StatusOK, base+"/manifests/"+ref, "Accept", ocispec.MediaTypeImageManifest)
	if string(r.Body) != string(want) {
		t.Fatalf("%s:%s through airlock:\n%s\nwant\n%s", repo, ref, r.Body, want)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatal(err)
	}
	for _, desc := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		b := e2eMustGet(t, http.StatusOK, base+"/blobs/"+desc.Digest.String())
		if digest.FromBytes(b.Body) != desc.Digest {
			t.Errorf("blob %s of %s:%s through airlock does not match its digest", desc.Digest, repo, ref)
		}
	}
}

// checkReferrers checks that airlock lists bundle among d's referrers in
// repo and serves it.
func (e *sigEnv) checkReferrers(repo string, d v1.Hash, bundle ocispec.Descriptor) {
	t := e.t
	t.Helper()
	r := e2eMustGet(t, http.StatusOK, e.al.URL+"/v2/sig/"+repo+"/referrers/"+d.String())
	var idx ocispec.Index
	if err := json.Unmarshal(r.Body, &idx); err != nil {
		t.Fatalf("referrers of %s@%s: %v\n%s", repo, d, err, r.Body)
	}
	// The upstream (go-containerregistry's registry) lists the bundle
	// with its config's media type as artifactType; airlock passes the
	// list on as it is.
	if !slices.ContainsFunc(idx.Manifests, func(m ocispec.Descriptor) bool {
		return m.Digest == bundle.Digest && m.Size == bundle.Size
	}) {
		t.Fatalf("referrers of %s@%s through airlock lack the bundle %s:\n%s", repo, d, bundle.Digest, r.Body)
	}
	body := e2eMustGet(t, http.StatusOK, e.al.URL+"/v2/sig/"+repo+"/manifests/"+bundle.Digest.String(), "Accept", ocispec.MediaTypeImageManifest).Body
	if digest.FromBytes(body) != bundle.Digest {
		t.Fatalf("bundle manifest %s through airlock does not match its digest", bundle.Digest)
	}
	e.pullArtifact(repo, bundle.Digest.String(), body)
}

// checkSignatureQuarantine checks quarantine list -o json: exactly the
// images of want (digest → text its reason holds), each quarantined in
// team/keyed by team-signed for a signature reason.
func (e *sigEnv) checkSignatureQuarantine(stdout string, want map[v1.Hash]string) {
	t := e.t
	t.Helper()
	var list []struct {
		Repository string `json:"repository"`
		Digest     string `json:"digest"`
		State      string `json:"state"`
		Reasons    []struct {
			Type, Policy, Message string
		} `json:"reasons"`
	}
	if err := json.Unmarshal([]byte(stdout), &list); err != nil {
		t.Fatalf("quarantine list -o json is not a JSON array: %v\n%s", err, stdout)
	}
	if len(list) != len(want) {
		t.Errorf("quarantine list has %d images, want %d:\n%s", len(list), len(want), stdout)
	}
	for _, img := range list {
		text, ok := want[v1.Hash{Algorithm: "sha256", Hex: strings.TrimPrefix(img.Digest, "sha256:")}]
		if !ok || img.Repository != "sig/team/keyed" || img.State != "quarantined" {
			t.Errorf("quarantine list entry %+v: want one of %v in sig/team/keyed, quarantined", img, want)
			continue
		}
		if len(img.Reasons) != 1 || img.Reasons[0].Type != "signature" || img.Reasons[0].Policy != "team-signed" ||
			!strings.HasPrefix(img.Reasons[0].Message, "policy team-signed: ") || !strings.Contains(img.Reasons[0].Message, text) {
			t.Errorf("%s: reasons %+v, want one of type signature from team-signed saying %q", img.Digest, img.Reasons, text)
		}
	}
}

// checkUpstreamRequests checks that every request the upstream recorded
// was the API check or for one of repos.
func (e *sigEnv) checkUpstreamRequests(repos ...string) {
	t := e.t
	t.Helper()
	for _, r := range e.up.Requests() {
		if r.Path == "/v2/" || slices.ContainsFunc(repos, func(repo string) bool { return strings.HasPrefix(r.Path, "/v2/"+repo+"/") }) {
			continue
		}
		t.Errorf("upstream request %s %s is for none of %v", r.Method, r.Path, repos)
	}
	if v := e.up.Violations(); len(v) > 0 {
		t.Errorf("upstream protocol violations: %v", v)
	}
}

// egressTrap is an HTTP proxy on loopback that answers nothing but
// records every request: airlock runs with HTTP(S)_PROXY pointing at it,
// so any request of airlock's to a host other than loopback (a trust
// root update, an OCSP or CRL fetch, a transparency-log lookup) lands
// here.
type egressTrap struct {
	url string
	mu  sync.Mutex
	got []string
}

func newEgressTrap(t *testing.T) *egressTrap {
	tr := &egressTrap{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		tr.got = append(tr.got, r.Method+" "+r.Host+r.URL.RequestURI())
		tr.mu.Unlock()
		http.Error(w, "egress refused by the test", http.StatusForbidden)
	}))
	t.Cleanup(srv.Close)
	tr.url = srv.URL
	return tr
}

// env is airlock's proxy environment: everything but loopback through
// the trap.
func (tr *egressTrap) env() []string {
	return []string{"HTTP_PROXY=" + tr.url, "HTTPS_PROXY=" + tr.url, "http_proxy=" + tr.url, "https_proxy=" + tr.url,
		"NO_PROXY=127.0.0.1,localhost,::1", "no_proxy=127.0.0.1,localhost,::1"}
}

func (tr *egressTrap) requests() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.got)
}
