package verify

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"

	"github.com/opencontainers/go-digest"
)

var (
	// ErrInvalidDigest means a digest string is malformed: it is not
	// "<algorithm>:<hex>" with lowercase hex of the algorithm's length.
	ErrInvalidDigest = errors.New("invalid digest")

	// ErrUnsupportedAlgorithm means the digest is well formed but uses an
	// algorithm other than sha256 or sha512.
	ErrUnsupportedAlgorithm = errors.New("unsupported digest algorithm")
)

// newHash returns a fresh hash for d's algorithm. The algorithms are named
// here rather than looked up through go-digest's registry so that support
// does not depend on which crypto packages some other import happened to
// link in.
func newHash(d digest.Digest) (hash.Hash, error) {
	switch d.Algorithm() {
	case digest.SHA256:
		return sha256.New(), nil
	case digest.SHA512:
		return sha512.New(), nil
	default:
		return nil, fmt.Errorf("%w %q in %q: only sha256 and sha512 are accepted",
			ErrUnsupportedAlgorithm, string(d.Algorithm()), truncate(string(d)))
	}
}

// hexLen is the length of the encoded part for each supported algorithm.
var hexLen = map[digest.Algorithm]int{
	digest.SHA256: 64,
	digest.SHA512: 128,
}

// Check reports whether want is a well-formed sha256 or sha512 digest. It is
// meant for untrusted input: callers use the digest as a storage key and a
// path component only after Check accepts it.
func Check(want digest.Digest) error {
	s := string(want)
	i := -1
	for j := 0; j < len(s); j++ {
		if s[j] == ':' {
			i = j
			break
		}
	}
	if i <= 0 || i == len(s)-1 {
		return fmt.Errorf("%w %q: want <algorithm>:<hex>", ErrInvalidDigest, truncate(s))
	}
	alg := digest.Algorithm(s[:i])
	n, ok := hexLen[alg]
	if !ok {
		return fmt.Errorf("%w %q in %q: only sha256 and sha512 are accepted",
			ErrUnsupportedAlgorithm, string(alg), truncate(s))
	}
	enc := s[i+1:]
	if len(enc) != n {
		return fmt.Errorf("%w %q: %s needs %d hex characters, got %d",
			ErrInvalidDigest, truncate(s), alg, n, len(enc))
	}
	for j := 0; j < len(enc); j++ {
		c := enc[j]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w %q: encoded part must be lowercase hex", ErrInvalidDigest, truncate(s))
		}
	}
	return nil
}

// Bytes checks that b has digest want. It is the whole-buffer counterpart of
// [Reader], for content small enough to hold in memory such as manifests.
func Bytes(want digest.Digest, b []byte) error {
	if err := Check(want); err != nil {
		return err
	}
	h, _ := newHash(want) // Check accepted the algorithm.
	h.Write(b)
	got := sum(want.Algorithm(), h)
	if got != want {
		return fmt.Errorf("%w: expected %s, got %s over %d bytes", ErrDigestMismatch, want, got, len(b))
	}
	return nil
}

// truncate keeps error messages bounded when the input is hostile.
func truncate(s string) string {
	const max = 160
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

func sum(alg digest.Algorithm, h hash.Hash) digest.Digest {
	return digest.NewDigestFromEncoded(alg, hex.EncodeToString(h.Sum(nil)))
}
