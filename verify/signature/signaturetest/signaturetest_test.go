package signaturetest_test

import (
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sigstore/sigstore-go/pkg/root"

	"github.com/airlock-registry/airlock/integration/upstreamtest"
	st "github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

// TestPayload pins the simple-signing payload to cosign's bytes.
func TestPayload(t *testing.T) {
	t.Parallel()
	d := digest.FromString("image")
	got := string(st.Payload("registry.test/acme/app", d))
	want := `{"critical":{"identity":{"docker-reference":"registry.test/acme/app"},"image":{"docker-manifest-digest":"` +
		d.String() + `"},"type":"cosign container image signature"},"optional":null}`
	if got != want {
		t.Fatalf("payload\n%s\nwant\n%s", got, want)
	}
}

// TestTrustedRootRoundTrip checks that the trusted root survives
// trusted_root.json with its logs keyed and identified as verifiers look
// them up (pkg/testing/ca's hex-string IDs do not).
func TestTrustedRootRoundTrip(t *testing.T) {
	t.Parallel()
	vs := st.NewVirtualSigstore(t)
	tr, err := root.NewTrustedRootFromJSON(vs.TrustedRootJSON(t))
	if err != nil {
		t.Fatal(err)
	}
	for name, logs := range map[string]map[string]*root.TransparencyLog{"rekor": tr.RekorLogs(), "ct": tr.CTLogs()} {
		if len(logs) != 1 {
			t.Fatalf("%s logs: %d, want 1", name, len(logs))
		}
		for id, l := range logs {
			if len(l.ID) != 32 {
				t.Errorf("%s log %s: ID of %d bytes, want a 32-byte key ID", name, id, len(l.ID))
			}
		}
	}
	if len(tr.FulcioCertificateAuthorities()) != 1 || len(tr.TimestampingAuthorities()) != 1 {
		t.Fatalf("trusted root has %d CAs and %d TSAs, want 1 each", len(tr.FulcioCertificateAuthorities()), len(tr.TimestampingAuthorities()))
	}
}

// TestSignatureManifest checks the shape of cosign's signature manifest.
func TestSignatureManifest(t *testing.T) {
	t.Parallel()
	k := st.NewKey(t, st.ECDSA)
	a := st.SignatureManifest(t, st.SignKey(t, k, st.Payload("r/a", digest.FromString("x"))))
	var m struct {
		MediaType string `json:"mediaType"`
		Config    struct {
			MediaType string `json:"mediaType"`
		} `json:"config"`
		Layers []struct {
			MediaType   string            `json:"mediaType"`
			Annotations map[string]string `json:"annotations"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(a.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Config.MediaType != "application/vnd.oci.image.config.v1+json" ||
		len(m.Layers) != 1 || m.Layers[0].MediaType != "application/vnd.dev.cosign.simplesigning.v1+json" ||
		m.Layers[0].Annotations[st.AnnotationSignature] == "" || len(a.Blobs) != 2 {
		t.Fatalf("signature manifest %s", a.Manifest)
	}
}

// TestPushAuthenticates checks that the Push helpers authenticate as each
// kind of Upstream demands.
func TestPushAuthenticates(t *testing.T) {
	t.Parallel()
	for _, opts := range []upstreamtest.Options{
		{Auth: upstreamtest.Plain},
		{Auth: upstreamtest.Basic, Username: "u", Password: "p"},
		{Auth: upstreamtest.DockerHubStyle},
	} {
		t.Run(opts.Auth.String(), func(t *testing.T) {
			t.Parallel()
			u := upstreamtest.New(t, opts)
			img := u.PushImage(t, "acme/app", "v1", 64, 1)
			subject := st.Subject(t, img)
			var push []st.PushOption
			if opts.Auth == upstreamtest.Basic {
				push = append(push, st.WithBasicAuth("u", "p"))
			}
			k := st.NewKey(t, st.ECDSA)
			st.PushSignatures(t, u, "acme/app", subject.Digest, []st.Layer{st.SignKey(t, k, st.Payload("r/acme/app", subject.Digest))}, push...)
			b := st.NewVirtualSigstore(t).BundleV3(t, st.BundleOptions{Subject: subject.Digest, Key: k})
			desc := st.PushArtifact(t, u, "acme/app", "", st.BundleArtifact(t, subject, b, ""), push...)
			st.PushFallbackIndex(t, u, "acme/app", subject.Digest, []ocispec.Descriptor{desc}, push...)
			if v := u.Violations(); len(v) > 0 {
				t.Fatalf("violations: %v", v)
			}
		})
	}
}
