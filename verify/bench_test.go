package verify

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
)

// BenchmarkReader measures the verifying reader over a 16 MiB blob beside
// its peer, a bare sha256 of the same bytes: the difference is what
// verification adds to every byte airlock fetches.
func BenchmarkReader(b *testing.B) {
	blob := make([]byte, 16<<20)
	if _, err := rand.Read(blob); err != nil {
		b.Fatal(err)
	}
	d := digest.FromBytes(blob)
	buf := make([]byte, 256<<10)
	b.Run("verify.Reader", func(b *testing.B) {
		b.SetBytes(int64(len(blob)))
		for b.Loop() {
			r := NewReader(bytes.NewReader(blob), d, int64(len(blob)), 0)
			if _, err := io.CopyBuffer(sink{}, r, buf); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(int64(len(blob)))
		for b.Loop() {
			h := sha256.New()
			if _, err := io.CopyBuffer(h, bytes.NewReader(blob), buf); err != nil {
				b.Fatal(err)
			}
			if digest.NewDigest(digest.SHA256, h) != d {
				b.Fatal("digest differs")
			}
		}
	})
}

// sink discards writes without io.Discard's ReaderFrom, which would read in
// its own 8 KiB pieces instead of the benchmark's buffer.
type sink struct{}

func (sink) Write(p []byte) (int, error) { return len(p), nil }
