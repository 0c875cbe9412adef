package signature_test

import (
	"testing"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/verify/signature"
	st "github.com/airlock-registry/airlock/verify/signature/signaturetest"
)

// BenchmarkVerify measures a cold check, discovery over loopback HTTP
// included: what the first pull of a signed image pays.
func BenchmarkVerify(b *testing.B) {
	cases := []struct {
		name  string
		setup func(b *testing.B, e *env) config.Signature
	}{
		{"key", func(b *testing.B, e *env) config.Signature {
			k := st.NewKey(b, st.ECDSA)
			st.PushSignatures(b, e.u, repo, e.d, []st.Layer{st.SignKey(b, k, e.payload())})
			return config.Signature{Keys: []string{e.keyFile(b, k)}}
		}},
		{"keyless-legacy", func(b *testing.B, e *env) config.Signature {
			st.PushSignatures(b, e.u, repo, e.d, []st.Layer{e.vs.SignKeyless(b, ghRepo, ghIssuer, e.payload())})
			return e.keyless(b)
		}},
		{"keyless-bundle", func(b *testing.B, e *env) config.Signature {
			e.pushBundle(b, e.vs.BundleV3(b, st.BundleOptions{Subject: e.d, Identity: ghRepo, Issuer: ghIssuer}), "")
			return e.keyless(b)
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b)
			v := newVerifier(b, tc.setup(b, e), signature.Options{})
			for b.Loop() {
				ev, err := v.Verify(b.Context(), e.fetcher, e.d, e.subject.MediaType)
				if err != nil || !ev.Verified {
					b.Fatalf("Verify: %+v, %v", ev, err)
				}
			}
		})
	}
}
