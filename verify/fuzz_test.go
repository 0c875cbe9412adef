package verify

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
)

// chunkReader returns data in chunks whose sizes come from the fuzzer, to
// exercise every split of the stream across Read calls.
type chunkReader struct {
	data   []byte
	chunks []byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(c.chunks) > 0 {
		n = min(n, int(c.chunks[0])) // zero-length reads are allowed too
		c.chunks = c.chunks[1:]
	}
	n = copy(p[:n], c.data)
	c.data = c.data[n:]
	return n, nil
}

func FuzzReader(f *testing.F) {
	f.Add([]byte("hello"), []byte{1, 2, 3}, int64(5), int64(0), false)
	f.Add([]byte("hello"), []byte{}, int64(-1), int64(3), true)
	f.Add([]byte{}, []byte{0}, int64(0), int64(1), false)
	f.Fuzz(func(t *testing.T, data, chunks []byte, size, limit int64, corrupt bool) {
		want := digest.FromBytes(data)
		src := data
		if corrupt && len(data) > 0 {
			src = flip(data, len(data)/2)
		}
		v := NewReader(&chunkReader{data: src, chunks: chunks}, want, size, limit)
		got, err := io.ReadAll(v)

		tooBig := (size >= 0 && int64(len(data)) > size) || (limit > 0 && int64(len(data)) > limit)
		switch {
		case tooBig:
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("len %d size %d limit %d: error %v, want ErrTooLarge", len(data), size, limit, err)
			}
		case corrupt && len(data) > 0, size >= 0 && int64(len(data)) != size:
			if !errors.Is(err, ErrDigestMismatch) {
				t.Fatalf("error %v, want ErrDigestMismatch", err)
			}
		default:
			if err != nil {
				t.Fatalf("clean stream failed: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("returned bytes differ from the stream")
			}
		}
		// Never more than the bound reaches the caller.
		if size >= 0 && v.N() > size || limit > 0 && v.N() > limit {
			t.Fatalf("N() = %d beyond size %d / limit %d", v.N(), size, limit)
		}
	})
}

func FuzzCheck(f *testing.F) {
	f.Add("sha256:" + string(bytes.Repeat([]byte("a"), 64)))
	f.Add("sha512:zz")
	f.Add("../../../etc/passwd")
	f.Fuzz(func(t *testing.T, s string) {
		if Check(digest.Digest(s)) != nil {
			return
		}
		// Whatever Check accepts is safe as a path component and agrees
		// with go-digest's own validation.
		if err := digest.Digest(s).Validate(); err != nil {
			t.Fatalf("Check accepted %q but go-digest rejects it: %v", s, err)
		}
		if bytes.ContainsAny([]byte(s), "/\\.") {
			t.Fatalf("Check accepted %q which contains path characters", s)
		}
	})
}
