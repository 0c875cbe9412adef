package signature_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/integration/upstreamtest"
	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/verify/signature"
	st "github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

const (
	ghIssuer = "https://token.actions.githubusercontent.com"
	ghRepo   = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"
	slsa     = "https://slsa.dev/provenance/v1"
)

// env is one image in an in-process registry, a Sigstore, and a place
// for the policy's files.
type env struct {
	u       *upstreamtest.Upstream
	img     upstreamtest.Image
	subject ocispec.Descriptor
	d       digest.Digest
	other   digest.Digest // another image of the same repository
	dir     string
	vs      *st.VirtualSigstore
	fetcher *st.Fetcher
}

const repo = "acme/app"

func newEnv(t testing.TB) *env {
	t.Helper()
	u := upstreamtest.New(t, upstreamtest.Options{})
	img := u.PushImage(t, repo, "v1", 256, 1)
	other := u.PushImage(t, repo, "v2", 256, 1)
	e := &env{u: u, img: img, subject: st.Subject(t, img), dir: t.TempDir(), vs: st.NewVirtualSigstore(t),
		other: digest.Digest(other.Digest.String())}
	e.d = e.subject.Digest
	e.fetcher = &st.Fetcher{Base: u.URL, Repo: repo, Client: &http.Client{Transport: loopbackOnly()}}
	return e
}

// loopbackOnly is a transport that refuses every host but 127.0.0.1:
// verification must never go online.
func loopbackOnly() http.RoundTripper {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" {
			return nil, fmt.Errorf("test transport refuses %s: only 127.0.0.1 is reachable", addr)
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	return tr
}

func (e *env) payload() []byte { return st.Payload(e.u.Host+"/"+repo, e.d) }

func (e *env) keyFile(t testing.TB, k *st.Key) string { return k.WritePublic(t, e.dir) }

func (e *env) rootFile(t testing.TB, vs *st.VirtualSigstore) string {
	t.Helper()
	dir := t.TempDir()
	return vs.WriteTrustedRoot(t, dir)
}

func (e *env) keyless(t testing.TB) config.Signature {
	return config.Signature{
		Keyless:     []config.KeylessIdentity{{Issuer: ghIssuer, SubjectRegExp: "^https://github.com/acme/"}},
		TrustedRoot: e.rootFile(t, e.vs),
	}
}

func (e *env) pushBundle(t testing.TB, b []byte, predicate string) ocispec.Descriptor {
	t.Helper()
	if predicate == "" {
		predicate = signature.CosignSignPredicateType
	}
	return st.PushArtifact(t, e.u, repo, "", st.BundleArtifact(t, e.subject, b, predicate))
}

func newVerifier(t testing.TB, cfg config.Signature, o signature.Options) *signature.Verifier {
	t.Helper()
	v, err := signature.New("official", cfg, os.ReadFile, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return v
}

type want struct {
	verified bool
	kind     string
	message  []string // substrings of the message
	examined int      // -1: not checked
}

func TestVerify(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		setup func(t *testing.T, e *env) (config.Signature, *st.Fetcher)
		want  func(e *env) want
	}{
		{name: "key ecdsa", setup: keyCase(st.ECDSA), want: keyWant},
		{name: "key rsa", setup: keyCase(st.RSA), want: keyWant},
		{name: "key ed25519", setup: keyCase(st.Ed25519), want: keyWant},
		{
			name: "wrong key",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				signer, trusted := st.NewKey(t, st.ECDSA), st.NewKey(t, st.ECDSA)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, signer, e.payload())})
				return config.Signature{Keys: []string{e.keyFile(t, trusted)}}, nil
			},
			want: func(e *env) want {
				return want{message: []string{"1 signature found, not verified: it is signed by a key the policy does not list"}, examined: 1}
			},
		},
		{
			name: "unsigned",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				return config.Signature{Keys: []string{e.keyFile(t, st.NewKey(t, st.ECDSA))}}, nil
			},
			want: func(e *env) want {
				return want{message: []string{fmt.Sprintf("no signature found (looked for sha256-%s.sig and OCI referrers)", e.d.Encoded())}, examined: 0}
			},
		},
		{
			name: "signature copied from another image",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k := st.NewKey(t, st.ECDSA)
				copied := st.SignKey(t, k, st.Payload(e.u.Host+"/"+repo, e.other))
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{copied})
				return config.Signature{Keys: []string{e.keyFile(t, k)}}, nil
			},
			want: func(e *env) want {
				return want{message: []string{"it names another image (" + e.other.String() + ")"}, examined: 1}
			},
		},
		{
			name: "two refused signatures",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k, unknown := st.NewKey(t, st.ECDSA), st.NewKey(t, st.RSA)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, unknown, e.payload()), st.SignKey(t, k, st.Payload(e.u.Host+"/"+repo, e.other))})
				return config.Signature{Keys: []string{e.keyFile(t, k)}}, nil
			},
			want: func(e *env) want {
				return want{message: []string{"2 signatures found, none verified: one is signed by a key the policy does not list; one names another image (" + e.other.String() + ")"}, examined: 2}
			},
		},
		{
			name: "attestation offered as a signature",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.d, PredicateType: slsa, Identity: ghRepo, Issuer: ghIssuer}), slsa)
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"it is an attestation (" + slsa + "), not a signature"}, examined: 1}
			},
		},
		{
			name: "keyless legacy",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.SignKeyless(t, ghRepo, ghIssuer, e.payload())})
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{verified: true, kind: "keyless", message: []string{"cosign keyless signature by " + ghRepo + " (issuer " + ghIssuer + ")"}, examined: 1}
			},
		},
		{
			name: "keyless legacy with required timestamp",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.SignKeyless(t, ghRepo, ghIssuer, e.payload())})
				cfg := e.keyless(t)
				cfg.Timestamps = 1
				return cfg, nil
			},
			want: func(e *env) want { return want{verified: true, kind: "keyless", examined: 1} },
		},
		{
			name: "keyless signature copied from another image",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.SignKeyless(t, ghRepo, ghIssuer, st.Payload(e.u.Host+"/"+repo, e.other))})
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"it names another image (" + e.other.String() + ")"}, examined: 1}
			},
		},
		{
			name: "keyless legacy with required timestamp missing",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				l := e.vs.SignKeyless(t, ghRepo, ghIssuer, e.payload())
				delete(l.Annotations, st.AnnotationTimestamp)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{l})
				cfg := e.keyless(t)
				cfg.Timestamps = 1
				return cfg, nil
			},
			want: func(e *env) want {
				return want{message: []string{"without the verified timestamps the policy requires"}, examined: 1}
			},
		},
		{
			name: "keyless by another identity",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.SignKeyless(t, "https://github.com/evil/x", ghIssuer, e.payload())})
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"it is a keyless signature by https://github.com/evil/x (issuer " + ghIssuer + "), not an identity the policy trusts"}, examined: 1}
			},
		},
		{
			name: "keyless from another root",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				foreign := st.NewVirtualSigstore(t)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{foreign.SignKeyless(t, ghRepo, ghIssuer, e.payload())})
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"keyless signature by " + ghRepo, "does not verify against the trusted root"}, examined: 1}
			},
		},
		{
			name: "keyless certificate from another root, log entry from ours",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				foreign := st.NewVirtualSigstore(t)
				l := foreign.SignKeyless(t, ghRepo, ghIssuer, e.payload())
				sig := decodeSig(t, l)
				l.Annotations[st.AnnotationBundle] = e.vs.RekorBundle(t, l.Payload, sig, []byte(l.Annotations[st.AnnotationCertificate]))
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{l})
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"whose certificate does not chain to the trusted root's Fulcio CAs"}, examined: 1}
			},
		},
		{
			name: "keyless certificate without an SCT",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.WithoutSCT().SignKeyless(t, ghRepo, ghIssuer, e.payload())})
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"whose certificate lacks a verified certificate-transparency timestamp"}, examined: 1}
			},
		},
		{
			name: "v3 bundle whose certificate lacks an SCT",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				e.pushBundle(t, e.vs.WithoutSCT().BundleV3(t, st.BundleOptions{Subject: e.d, Identity: ghRepo, Issuer: ghIssuer}), "")
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"whose certificate lacks a verified certificate-transparency timestamp"}, examined: 1}
			},
		},
		{
			name: "legacy keyless without a rekor bundle",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				l := e.vs.SignKeyless(t, ghRepo, ghIssuer, e.payload())
				delete(l.Annotations, st.AnnotationBundle)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{l})
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"without a Rekor bundle, which cannot be checked offline"}, examined: 1}
			},
		},
		{
			name: "key with required log entry missing",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k := st.NewKey(t, st.ECDSA)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, e.payload())})
				return config.Signature{Keys: []string{e.keyFile(t, k)}, TransparencyLog: 1, TrustedRoot: e.rootFile(t, e.vs)}, nil
			},
			want: func(e *env) want {
				return want{message: []string{"but it has no transparency-log entry, which the policy requires"}, examined: 1}
			},
		},
		{
			name: "key with required log entry present",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k := st.NewKey(t, st.ECDSA)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.SignKeyWithLog(t, k, e.payload())})
				return config.Signature{Keys: []string{e.keyFile(t, k)}, TransparencyLog: 1, TrustedRoot: e.rootFile(t, e.vs)}, nil
			},
			want: func(e *env) want { return want{verified: true, kind: "key", examined: 1} },
		},
		{
			name: "key with log entry from an untrusted log",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k := st.NewKey(t, st.ECDSA)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.NewVirtualSigstore(t).SignKeyWithLog(t, k, e.payload())})
				return config.Signature{Keys: []string{e.keyFile(t, k)}, TransparencyLog: 1, TrustedRoot: e.rootFile(t, e.vs)}, nil
			},
			want: func(e *env) want {
				return want{message: []string{"its transparency-log entry does not verify against the trusted root"}, examined: 1}
			},
		},
		{
			name: "v3 bundle via referrers",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.d, Identity: ghRepo, Issuer: ghIssuer}), "")
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{verified: true, kind: "keyless", message: []string{"cosign keyless signature (Sigstore bundle) by " + ghRepo}, examined: 1}
			},
		},
		{
			name: "v3 bundle via the fallback tag",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				desc := e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.d, Identity: ghRepo, Issuer: ghIssuer}), "")
				st.PushFallbackIndex(t, e.u, repo, e.d, []ocispec.Descriptor{desc})
				f := *e.fetcher
				f.NoReferrersAPI = true
				return e.keyless(t), &f
			},
			want: func(e *env) want { return want{verified: true, kind: "keyless", examined: 1} },
		},
		{
			name: "v3 bundle signed with a key",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k := st.NewKey(t, st.ECDSA)
				e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.d, Key: k}), "")
				return config.Signature{Keys: []string{e.keyFile(t, k)}}, nil
			},
			want: func(e *env) want {
				return want{verified: true, kind: "key", message: []string{"(Sigstore bundle)"}, examined: 1}
			},
		},
		{
			name: "v3 bundle signed with an unknown key",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.d, Key: st.NewKey(t, st.ECDSA)}), "")
				return config.Signature{Keys: []string{e.keyFile(t, st.NewKey(t, st.ECDSA))}}, nil
			},
			want: func(e *env) want {
				return want{message: []string{"it is signed by a key the policy does not list"}, examined: 1}
			},
		},
		{
			name: "v3 bundle for another image",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.other, Identity: ghRepo, Issuer: ghIssuer}), "")
				return e.keyless(t), nil
			},
			want: func(e *env) want {
				return want{message: []string{"it names another image (" + e.other.String() + ")"}, examined: 1}
			},
		},
		{
			name: "required attestation missing",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.d, Identity: ghRepo, Issuer: ghIssuer}), "")
				cfg := e.keyless(t)
				cfg.Attestations = []string{slsa}
				return cfg, nil
			},
			want: func(e *env) want {
				return want{kind: "keyless", message: []string{"but no verified attestation of type " + slsa + " was found"}, examined: 1}
			},
		},
		{
			name: "required attestation present",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				e.pushBundle(t, e.vs.BundleV3(t, st.BundleOptions{Subject: e.d, PredicateType: slsa, Identity: ghRepo, Issuer: ghIssuer}), slsa)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.SignKeyless(t, ghRepo, ghIssuer, e.payload())})
				cfg := e.keyless(t)
				cfg.Attestations = []string{slsa}
				return cfg, nil
			},
			want: func(e *env) want { return want{verified: true, kind: "keyless", examined: 2} },
		},
		{
			name: "required attestation in the legacy tag, keyless",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.SignKeyless(t, ghRepo, ghIssuer, e.payload())})
				st.PushAttestations(t, e.u, repo, e.d, []st.Layer{e.vs.AttestKeyless(t, ghRepo, ghIssuer, e.d, slsa)})
				cfg := e.keyless(t)
				cfg.Attestations = []string{slsa}
				return cfg, nil
			},
			want: func(e *env) want { return want{verified: true, kind: "keyless", examined: 2} },
		},
		{
			name: "required attestation in the legacy tag, by another identity",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{e.vs.SignKeyless(t, ghRepo, ghIssuer, e.payload())})
				st.PushAttestations(t, e.u, repo, e.d, []st.Layer{e.vs.AttestKeyless(t, "https://github.com/evil/x", ghIssuer, e.d, slsa)})
				cfg := e.keyless(t)
				cfg.Attestations = []string{slsa}
				return cfg, nil
			},
			want: func(e *env) want {
				return want{kind: "keyless", message: []string{"but no verified attestation of type " + slsa,
					"(refused: one is a keyless signature by https://github.com/evil/x (issuer " + ghIssuer + "), not an identity the policy trusts)"}, examined: 2}
			},
		},
		{
			name: "required attestation in the legacy tag, key",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k := st.NewKey(t, st.Ed25519)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, e.payload())})
				st.PushAttestations(t, e.u, repo, e.d, []st.Layer{
					st.AttestKey(t, k, e.other, slsa),
					st.AttestKey(t, st.NewKey(t, st.ECDSA), e.d, slsa),
					st.AttestKey(t, k, e.d, slsa),
				})
				return config.Signature{Keys: []string{e.keyFile(t, k)}, Attestations: []string{slsa}}, nil
			},
			want: func(e *env) want { return want{verified: true, kind: "key", examined: 4} },
		},
		{
			name: "maxSignatures",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k, unknown := st.NewKey(t, st.ECDSA), st.NewKey(t, st.ECDSA)
				var layers []st.Layer
				for range 3 {
					layers = append(layers, st.SignKey(t, unknown, e.payload()))
				}
				layers = append(layers, st.SignKey(t, k, e.payload()))
				st.PushSignatures(t, e.u, repo, e.d, layers)
				return config.Signature{Keys: []string{e.keyFile(t, k)}, MaxSignatures: 2}, nil
			},
			want: func(e *env) want {
				return want{message: []string{"stopped after examining 2 signatures, the policy's maxSignatures; 2 signatures found, none verified"}, examined: 2}
			},
		},
		{
			name: "maxBytes",
			setup: func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
				k := st.NewKey(t, st.ECDSA)
				st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, e.payload())})
				return config.Signature{Keys: []string{e.keyFile(t, k)}, MaxBytes: 64}, nil
			},
			want: func(e *env) want {
				return want{message: []string{"stopped: the signature artifacts exceed the policy's maxBytes (64 bytes); no signature could be checked within it"}, examined: -1}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			cfg, f := tc.setup(t, e)
			if f == nil {
				f = e.fetcher
			}
			now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
			v := newVerifier(t, cfg, signature.Options{Now: func() time.Time { return now }})
			ev, err := v.Verify(t.Context(), f, e.d, e.subject.MediaType)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			check(t, ev, tc.want(e), v, now)
		})
	}
}

func check(t *testing.T, ev metadata.SignatureEvidence, w want, v *signature.Verifier, now time.Time) {
	t.Helper()
	t.Logf("evidence: %+v", ev)
	if ev.Verified != w.verified {
		t.Errorf("Verified = %v, want %v (message %q)", ev.Verified, w.verified, ev.Message)
	}
	if w.kind != "" && ev.Kind != w.kind {
		t.Errorf("Kind = %q, want %q", ev.Kind, w.kind)
	}
	for _, m := range w.message {
		if !strings.Contains(ev.Message, m) {
			t.Errorf("Message = %q\nwant it to contain %q", ev.Message, m)
		}
	}
	if w.examined >= 0 && ev.Examined != w.examined {
		t.Errorf("Examined = %d, want %d", ev.Examined, w.examined)
	}
	if ev.Policy != "official" || ev.Hash != v.Hash() || !ev.CheckedAt.Equal(now) {
		t.Errorf("evidence names policy %q, hash %q, checked at %v; want official, %q, %v", ev.Policy, ev.Hash, ev.CheckedAt, v.Hash(), now)
	}
	if ev.Verified && ev.KeyID == "" {
		t.Errorf("verified evidence without KeyID")
	}
}

func keyCase(alg st.Alg) func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
	return func(t *testing.T, e *env) (config.Signature, *st.Fetcher) {
		k := st.NewKey(t, alg)
		other := st.NewKey(t, st.ECDSA)
		st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, e.payload())})
		return config.Signature{Keys: []string{e.keyFile(t, other), e.keyFile(t, k)}}, nil
	}
}

func keyWant(*env) want {
	return want{verified: true, kind: "key", message: []string{"signed by key sha256:", "(cosign signature)"}, examined: 1}
}

func decodeSig(t *testing.T, l st.Layer) []byte {
	t.Helper()
	b, err := decodeB64(l.Annotations[st.AnnotationSignature])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKeyID checks that a key signature's evidence names the key that
// verified it.
func TestKeyID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := st.NewKey(t, st.Ed25519)
	st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, e.payload())})
	v := newVerifier(t, config.Signature{Keys: []string{e.keyFile(t, k)}}, signature.Options{})
	ev, err := v.Verify(t.Context(), e.fetcher, e.d, e.subject.MediaType)
	if err != nil {
		t.Fatal(err)
	}
	if !ev.Verified || ev.KeyID != k.ID() || !strings.Contains(ev.Message, k.ID()) {
		t.Fatalf("evidence %+v, want verified by %s", ev, k.ID())
	}
}

// TestHash checks that Hash follows the trust material: the same files
// give the same hash, a changed key file another.
func TestHash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "team.pub")
	write := func(k *st.Key) {
		if err := os.WriteFile(path, k.PublicPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := config.Signature{Keys: []string{path}}
	write(st.NewKey(t, st.ECDSA))
	a := newVerifier(t, cfg, signature.Options{}).Hash()
	b := newVerifier(t, cfg, signature.Options{}).Hash()
	if a != b || !strings.HasPrefix(a, "sha256:") {
		t.Fatalf("same material, hashes %q and %q", a, b)
	}
	write(st.NewKey(t, st.ECDSA))
	if c := newVerifier(t, cfg, signature.Options{}).Hash(); c == a {
		t.Fatalf("changed key file, same hash %q", c)
	}
	cfg.TransparencyLog = 0
	cfg.Attestations = []string{slsa}
	if d := newVerifier(t, cfg, signature.Options{}).Hash(); d == a {
		t.Fatalf("changed settings, same hash %q", d)
	}
}

// TestFetchError checks that a registry that cannot answer gives an
// error, not evidence: the gate answers "retry", not "quarantined".
func TestFetchError(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := st.NewKey(t, st.ECDSA)
	v := newVerifier(t, config.Signature{Keys: []string{e.keyFile(t, k)}}, signature.Options{})
	e.u.Down()
	ev, err := v.Verify(t.Context(), e.fetcher, e.d, e.subject.MediaType)
	if err == nil {
		t.Fatalf("Verify with the registry down gave evidence %+v, want an error", ev)
	}
	if errors.Is(err, signature.ErrNotFound) || !strings.Contains(err.Error(), e.d.String()) {
		t.Fatalf("error %q should name the digest and not be not-found", err)
	}
}

// TestCancelled checks that a cancelled check is an error, not evidence.
func TestCancelled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := st.NewKey(t, st.ECDSA)
	st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, e.payload())})
	v := newVerifier(t, config.Signature{Keys: []string{e.keyFile(t, k)}}, signature.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if ev, err := v.Verify(ctx, e.fetcher, e.d, e.subject.MediaType); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with a cancelled context: evidence %+v, error %v; want context.Canceled", ev, err)
	}
}

// TestLogsReasons checks that each refused signature is logged with its
// reason at debug level.
func TestLogsReasons(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, st.NewKey(t, st.ECDSA), e.payload())})
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	v := newVerifier(t, config.Signature{Keys: []string{e.keyFile(t, st.NewKey(t, st.ECDSA))}}, signature.Options{Logger: logger})
	if _, err := v.Verify(t.Context(), e.fetcher, e.d, e.subject.MediaType); err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); !strings.Contains(got, "signature refused") || !strings.Contains(got, "policy=official") ||
		!strings.Contains(got, e.d.String()) || !strings.Contains(got, "is signed by a key the policy does not list") {
		t.Fatalf("log %q lacks the refusal", got)
	}
}

// TestNew checks that New refuses what it cannot use, naming the file.
func TestNew(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pub")
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	badRoot := filepath.Join(dir, "root.json")
	if err := os.WriteFile(badRoot, []byte(`{"mediaType":"nope"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  config.Signature
		want string
	}{
		{"unreadable key", config.Signature{Keys: []string{filepath.Join(dir, "missing.pub")}}, "missing.pub"},
		{"not a key", config.Signature{Keys: []string{bad}}, "bad.pub is not a PEM public key"},
		{"not a trusted root", config.Signature{TrustedRoot: badRoot, Keyless: []config.KeylessIdentity{{Issuer: ghIssuer, Subject: ghRepo}}}, "root.json is not a Sigstore trusted root"},
		{"timestamps without a trusted root", config.Signature{Timestamps: 1}, "timestamps needs trustedRoot"},
		{"notation without verifier", config.Signature{Notation: &config.NotationTrust{TrustedIdentities: []string{"*"}}}, "no Notation verifier"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := signature.New("official", tc.cfg, os.ReadFile, signature.Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "official") {
				t.Fatalf("New: %v, want an error naming the policy and containing %q", err, tc.want)
			}
		})
	}
}

// notationStub stands in for verify/notation: it accepts the one envelope
// it was given and records the subject it was asked about.
type notationStub struct {
	envelope []byte
	subject  ocispec.Descriptor
}

func (n *notationStub) Verify(_ context.Context, envelope []byte, mediaType string, subject ocispec.Descriptor) (string, error) {
	n.subject = subject
	if mediaType != "application/jose+json" || !bytes.Equal(envelope, n.envelope) {
		return "", errors.New("signature is not trusted")
	}
	return "x509.subject: CN=release,O=Acme", nil
}

// TestNotation checks that Notation signatures are found among the
// referrers and their envelopes handed to the Notation verifier with the
// image's descriptor.
func TestNotation(t *testing.T) {
	t.Parallel()
	for _, trusted := range []bool{true, false} {
		t.Run(fmt.Sprint("trusted=", trusted), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			envelope := []byte(`{"payload":"e30","protected":"e30","signature":"AAAA"}`)
			st.PushArtifact(t, e.u, repo, "", st.ReferrerArtifact(t, signature.NotationArtifactType, e.subject, "application/jose+json", envelope, nil))
			stub := &notationStub{envelope: envelope}
			if !trusted {
				stub.envelope = []byte("another")
			}
			ca := filepath.Join(t.TempDir(), "ca.pem")
			if err := os.WriteFile(ca, []byte("ca"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := config.Signature{Notation: &config.NotationTrust{TrustStore: []string{ca}, TrustedIdentities: []string{"*"}}}
			v := newVerifier(t, cfg, signature.Options{Notation: stub})
			ev, err := v.Verify(t.Context(), e.fetcher, e.d, e.subject.MediaType)
			if err != nil {
				t.Fatal(err)
			}
			if stub.subject.Digest != e.d || stub.subject.Size != e.subject.Size || stub.subject.MediaType != e.subject.MediaType {
				t.Errorf("Notation verifier asked about %+v, want %+v", stub.subject, e.subject)
			}
			if trusted {
				if !ev.Verified || ev.Kind != "notation" || ev.Identity != "x509.subject: CN=release,O=Acme" {
					t.Fatalf("evidence %+v, want verified by Notation", ev)
				}
				return
			}
			if ev.Verified || !strings.Contains(ev.Message, "it is a Notation signature that does not verify (signature is not trusted)") {
				t.Fatalf("evidence %+v, want refused with the verifier's reason", ev)
			}
		})
	}
}

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

// TestSignedIndex checks the one-call helpers on a multi-platform image:
// signatures of the index verify for the index digest, and not for a
// platform manifest it lists (the gate decides what an index's signature
// covers).
func TestSignedIndex(t *testing.T) {
	t.Parallel()
	u := upstreamtest.New(t, upstreamtest.Options{})
	x := u.PushIndex(t, repo, "multi", 128, 1)
	subject := st.IndexSubject(t, x)
	vs := st.NewVirtualSigstore(t)
	k := st.NewKey(t, st.RSA)
	st.PushKeySignature(t, u, repo, subject, k)
	vs.PushBundle(t, u, repo, subject, st.BundleOptions{Identity: ghRepo, Issuer: ghIssuer})
	f := &st.Fetcher{Base: u.URL, Repo: repo, Client: &http.Client{Transport: loopbackOnly()}}
	dir := t.TempDir()
	for _, cfg := range []config.Signature{
		{Keys: []string{k.WritePublic(t, dir)}},
		{Keyless: []config.KeylessIdentity{{Issuer: ghIssuer, Subject: ghRepo}}, TrustedRoot: vs.WriteTrustedRoot(t, dir)},
	} {
		v := newVerifier(t, cfg, signature.Options{})
		ev, err := v.Verify(t.Context(), f, subject.Digest, subject.MediaType)
		if err != nil || !ev.Verified {
			t.Fatalf("index: evidence %+v, error %v; want verified", ev, err)
		}
		child := x.Images[0]
		ev, err = v.Verify(t.Context(), f, digest.Digest(child.Digest.String()), "")
		if err != nil || ev.Verified || !strings.HasPrefix(ev.Message, "no signature found") {
			t.Fatalf("platform manifest: evidence %+v, error %v; want no signature found", ev, err)
		}
	}
}

// TestConcurrent checks that one Verifier serves concurrent checks.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := st.NewKey(t, st.ECDSA)
	st.PushSignatures(t, e.u, repo, e.d, []st.Layer{st.SignKey(t, k, e.payload()), e.vs.SignKeyless(t, ghRepo, ghIssuer, e.payload())})
	cfg := e.keyless(t)
	v := newVerifier(t, cfg, signature.Options{})
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			ev, err := v.Verify(t.Context(), e.fetcher, e.d, e.subject.MediaType)
			if err == nil && (!ev.Verified || ev.Kind != "keyless") {
				err = fmt.Errorf("evidence %+v, want verified keyless", ev)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// notFound is a Fetcher's own not-found error, in errdefs' style.
type notFound struct{ what string }

func (e notFound) Error() string { return e.what + " not found" }
func (notFound) NotFound()       {}

// ownNotFound is a Fetcher that reports absence with its own error type.
type ownNotFound struct{ *st.Fetcher }

func (f ownNotFound) Manifest(ctx context.Context, ref string) ([]byte, string, digest.Digest, error) {
	b, mt, d, err := f.Fetcher.Manifest(ctx, ref)
	if errors.Is(err, signature.ErrNotFound) {
		err = fmt.Errorf("manifest: %w", notFound{ref})
	}
	return b, mt, d, err
}

func (f ownNotFound) Referrers(ctx context.Context, d digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	descs, err := f.Fetcher.Referrers(ctx, d, artifactType)
	if errors.Is(err, signature.ErrNotFound) {
		err = notFound{"referrers"}
	}
	return descs, err
}

// TestFetcherNotFoundConvention checks that a Fetcher may report absence
// with any error that has a NotFound method.
func TestFetcherNotFoundConvention(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	f := *e.fetcher
	f.NoReferrersAPI = true // no fallback tag either: referrers are not found
	v := newVerifier(t, config.Signature{Keys: []string{e.keyFile(t, st.NewKey(t, st.ECDSA))}}, signature.Options{})
	ev, err := v.Verify(t.Context(), ownNotFound{&f}, e.d, e.subject.MediaType)
	if err != nil || ev.Verified || !strings.HasPrefix(ev.Message, "no signature found") {
		t.Fatalf("evidence %+v, error %v; want no signature found", ev, err)
	}
}
