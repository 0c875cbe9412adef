package notation_test

import (
	"os"
	"sync"
	"testing"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/verify/notation"
	"github.com/airlock-registry/airlock/verify/notation/notationtest"
)

// TestVerifyConcurrently shares one Verifier between goroutines, as the
// proxy does across pulls, mixing envelopes that pass and fail.
func TestVerifyConcurrently(t *testing.T) {
	t.Parallel()
	p := notationtest.NewPKI(t, notationtest.PKIOptions{})
	v, err := notation.New(config.NotationTrust{
		TrustStore:        []string{writeFile(t, t.TempDir(), "ca.pem", p.CAPEM())},
		TrustedIdentities: []string{p.Identity()},
	}, os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	good := p.Sign(t, image, notation.MediaTypeCOSE)
	other := image
	other.Size++
	bad := p.Sign(t, other, notation.MediaTypeJWS)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			sig, wantOK := good, true
			if i%2 == 1 {
				sig, wantOK = bad, false
			}
			_, err := v.Verify(t.Context(), sig.Envelope, sig.MediaType, image)
			if (err == nil) != wantOK {
				t.Errorf("goroutine %d: Verify error %v, want ok=%v", i, err, wantOK)
			}
		})
	}
	wg.Wait()
}

// BenchmarkVerify is the cold cost of verifying one Notation signature:
// envelope parsing, the signature, the chain and identity, the payload.
func BenchmarkVerify(b *testing.B) {
	p := notationtest.NewPKI(b, notationtest.PKIOptions{})
	v, err := notation.New(config.NotationTrust{
		TrustStore:        []string{writeFile(b, b.TempDir(), "ca.pem", p.CAPEM())},
		TrustedIdentities: []string{p.Identity()},
	}, os.ReadFile)
	if err != nil {
		b.Fatal(err)
	}
	for _, mt := range []string{notation.MediaTypeJWS, notation.MediaTypeCOSE} {
		sig := p.Sign(b, image, mt)
		b.Run(mt, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(b.Context(), sig.Envelope, sig.MediaType, image); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
