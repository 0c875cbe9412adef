package verify

import (
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"
)

var (
	// ErrDigestMismatch means content did not hash to the digest it was
	// requested by, or its length differed from the size it was announced
	// with. The content must be discarded; retrying may reach a healthy
	// upstream.
	ErrDigestMismatch = errors.New("digest mismatch")

	// ErrTooLarge means content exceeded its announced size or a configured
	// limit. Reading stopped as soon as the excess arrived.
	ErrTooLarge = errors.New("content too large")
)

// Reader hashes everything read through it and verifies the digest at the
// end of the stream. It is not safe for concurrent use, like most readers.
type Reader struct {
	r     io.Reader
	want  digest.Digest
	h     hash.Hash
	size  int64 // expected size, or -1 if unknown
	bound int64 // most bytes that may be read, or -1 for no bound
	n     int64
	err   error // sticky: once set, every Read returns it
}

// NewReader returns a Reader over r that expects content with digest want.
//
// size is the expected length, or a negative value if unknown. limit caps the
// length regardless of size; limit <= 0 means no cap. If want is malformed or
// uses an unsupported algorithm, the first Read returns that error without
// reading from r; use [Check] to find out earlier.
func NewReader(r io.Reader, want digest.Digest, size, limit int64) *Reader {
	v := &Reader{r: r, want: want, size: -1, bound: -1}
	if size >= 0 {
		v.size = size
		v.bound = size
	}
	if limit > 0 && (v.bound < 0 || limit < v.bound) {
		v.bound = limit
	}
	if err := Check(want); err != nil {
		v.err = err
		return v
	}
	v.h, _ = newHash(want)
	return v
}

// N returns the number of bytes read so far.
func (v *Reader) N() int64 { return v.n }

// Read reads from the underlying reader, hashing what it returns. At the end
// of the stream it returns io.EOF if the content matched, or an error
// wrapping ErrDigestMismatch if it did not. Crossing the size or limit bound
// returns an error wrapping ErrTooLarge.
func (v *Reader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	// Ask for at most one byte past the bound: that is enough to detect an
	// oversized stream without ever pulling a large excess from upstream.
	if v.bound >= 0 && int64(len(p)) > v.bound-v.n+1 {
		p = p[:v.bound-v.n+1]
	}
	n, err := v.r.Read(p)
	if v.bound >= 0 && v.n+int64(n) > v.bound {
		n = int(v.bound - v.n)
		v.hashed(p[:n])
		v.err = v.tooLarge()
		return n, v.err
	}
	v.hashed(p[:n])
	switch {
	case err == io.EOF:
		v.err = v.finish()
		return n, v.err
	case err != nil:
		// A failed upstream read is reported as is; the content is simply
		// incomplete and the caller discards it.
		v.err = err
		return n, err
	}
	return n, nil
}

func (v *Reader) hashed(b []byte) {
	v.h.Write(b)
	v.n += int64(len(b))
}

func (v *Reader) tooLarge() error {
	if v.size >= 0 && v.bound == v.size {
		return fmt.Errorf("%w: %s announced %d bytes but more arrived", ErrTooLarge, v.want, v.size)
	}
	return fmt.Errorf("%w: %s exceeds the %d byte limit", ErrTooLarge, v.want, v.bound)
}

// finish runs at the end of the stream and decides between io.EOF and a
// mismatch.
func (v *Reader) finish() error {
	if v.size >= 0 && v.n != v.size {
		return fmt.Errorf("%w: %s announced %d bytes, stream ended after %d",
			ErrDigestMismatch, v.want, v.size, v.n)
	}
	got := sum(v.want.Algorithm(), v.h)
	if got != v.want {
		return fmt.Errorf("%w: expected %s, got %s over %d bytes", ErrDigestMismatch, v.want, got, v.n)
	}
	return io.EOF
}
