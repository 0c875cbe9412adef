package verify

import (
	"bytes"
	"crypto/sha512"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"
)

func sha256Of(b []byte) digest.Digest { return digest.FromBytes(b) }

func sha512Of(b []byte) digest.Digest {
	h := sha512.Sum512(b)
	return sum512(h[:])
}

func sum512(b []byte) digest.Digest {
	const hexdigits = "0123456789abcdef"
	out := make([]byte, 0, len(b)*2)
	for _, c := range b {
		out = append(out, hexdigits[c>>4], hexdigits[c&15])
	}
	return digest.NewDigestFromEncoded(digest.SHA512, string(out))
}

// countingReader counts how many bytes the Reader pulled from upstream, to
// prove that an oversized stream is cut off rather than drained.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestReader(t *testing.T) {
	t.Parallel()
	content := bytes.Repeat([]byte("airlock layer bytes "), 1000)
	good := sha256Of(content)
	other := sha256Of([]byte("something else"))

	tests := []struct {
		name        string
		data        []byte
		want        digest.Digest
		size, limit int64
		wrap        func(io.Reader) io.Reader
		wantErr     error // nil means a clean io.EOF
		maxPulled   int64 // when > 0, upstream bytes consumed must not exceed this
	}{
		{name: "sha256 match, size known", data: content, want: good, size: int64(len(content))},
		{name: "sha256 match, size unknown", data: content, want: good, size: -1},
		{name: "sha512 match", data: content, want: sha512Of(content), size: int64(len(content))},
		{name: "match within limit", data: content, want: good, size: -1, limit: int64(len(content))},
		{name: "one byte per read", data: content, want: good, size: int64(len(content)), wrap: iotest.OneByteReader},
		{name: "data returned with EOF", data: content, want: good, size: int64(len(content)), wrap: iotest.DataErrReader},
		{name: "empty content", data: nil, want: sha256Of(nil), size: 0},
		{name: "wrong digest", data: content, want: other, size: -1, wantErr: ErrDigestMismatch},
		{name: "flipped byte", data: flip(content, 500), want: good, size: int64(len(content)), wantErr: ErrDigestMismatch},
		{name: "short stream", data: content[:100], want: good, size: int64(len(content)), wantErr: ErrDigestMismatch},
		{name: "short stream with right digest of the prefix", data: content[:100], want: sha256Of(content[:100]), size: int64(len(content)), wantErr: ErrDigestMismatch},
		{name: "longer than size", data: content, want: good, size: 100, wantErr: ErrTooLarge, maxPulled: 101},
		{name: "longer than limit", data: content, want: good, size: -1, limit: 1000, wantErr: ErrTooLarge, maxPulled: 1001},
		{name: "limit tighter than size", data: content, want: good, size: int64(len(content)), limit: 10, wantErr: ErrTooLarge, maxPulled: 11},
		{name: "size zero but data", data: []byte("x"), want: sha256Of(nil), size: 0, wantErr: ErrTooLarge, maxPulled: 1},
		{name: "unsupported algorithm", data: content, want: digest.Digest("sha384:" + strings.Repeat("a", 96)), size: -1, wantErr: ErrUnsupportedAlgorithm, maxPulled: -1},
		{name: "malformed digest", data: content, want: digest.Digest("sha256:../../etc/passwd"), size: -1, wantErr: ErrInvalidDigest, maxPulled: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			up := &countingReader{r: bytes.NewReader(tt.data)}
			var src io.Reader = up
			if tt.wrap != nil {
				src = tt.wrap(up)
			}
			v := NewReader(src, tt.want, tt.size, tt.limit)
			got, err := io.ReadAll(v)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ReadAll: %v", err)
				}
				if !bytes.Equal(got, tt.data) {
					t.Fatalf("read %d bytes, want %d identical bytes", len(got), len(tt.data))
				}
			} else if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReadAll error = %v, want %v", err, tt.wantErr)
			}
			if v.N() != int64(len(got)) {
				t.Errorf("N() = %d, but %d bytes were returned", v.N(), len(got))
			}
			switch {
			case tt.maxPulled < 0 && up.n != 0:
				t.Errorf("pulled %d bytes from upstream for an unusable digest, want 0", up.n)
			case tt.maxPulled > 0 && up.n > tt.maxPulled:
				t.Errorf("pulled %d bytes from upstream, want at most %d", up.n, tt.maxPulled)
			}
			// The verdict is sticky: reading again must not turn a failure
			// into success.
			if _, again := v.Read(make([]byte, 10)); tt.wantErr != nil && !errors.Is(again, tt.wantErr) {
				t.Errorf("second Read error = %v, want %v again", again, tt.wantErr)
			}
		})
	}
}

func TestReaderMismatchNamesBothDigests(t *testing.T) {
	t.Parallel()
	want := sha256Of([]byte("expected"))
	actual := sha256Of([]byte("actual"))
	_, err := io.ReadAll(NewReader(strings.NewReader("actual"), want, -1, 0))
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("error = %v, want ErrDigestMismatch", err)
	}
	for _, d := range []digest.Digest{want, actual} {
		if !strings.Contains(err.Error(), d.String()) {
			t.Errorf("error %q does not name %s", err, d)
		}
	}
}

func TestReaderPassesUpstreamErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("connection reset")
	content := []byte("partial")
	v := NewReader(io.MultiReader(bytes.NewReader(content), iotest.ErrReader(boom)), sha256Of(content), -1, 0)
	if _, err := io.ReadAll(v); !errors.Is(err, boom) {
		t.Fatalf("error = %v, want the upstream error", err)
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		wantErr error
	}{
		{in: "sha256:" + strings.Repeat("0", 64)},
		{in: "sha512:" + strings.Repeat("f", 128)},
		{in: "", wantErr: ErrInvalidDigest},
		{in: "sha256", wantErr: ErrInvalidDigest},
		{in: "sha256:", wantErr: ErrInvalidDigest},
		{in: ":abc", wantErr: ErrInvalidDigest},
		{in: "sha256:" + strings.Repeat("0", 63), wantErr: ErrInvalidDigest},
		{in: "sha256:" + strings.Repeat("0", 65), wantErr: ErrInvalidDigest},
		{in: "sha256:" + strings.Repeat("A", 64), wantErr: ErrInvalidDigest},
		{in: "sha256:" + strings.Repeat("0", 62) + "/.", wantErr: ErrInvalidDigest},
		{in: "sha512:" + strings.Repeat("0", 64), wantErr: ErrInvalidDigest},
		{in: "sha384:" + strings.Repeat("0", 96), wantErr: ErrUnsupportedAlgorithm},
		{in: "md5:" + strings.Repeat("0", 32), wantErr: ErrUnsupportedAlgorithm},
		{in: "../../x:" + strings.Repeat("0", 64), wantErr: ErrUnsupportedAlgorithm},
	}
	for _, tt := range tests {
		err := Check(digest.Digest(tt.in))
		if tt.wantErr == nil && err != nil {
			t.Errorf("Check(%q) = %v, want nil", tt.in, err)
		}
		if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
			t.Errorf("Check(%q) = %v, want %v", tt.in, err, tt.wantErr)
		}
	}
}

func TestBytes(t *testing.T) {
	t.Parallel()
	body := []byte(`{"schemaVersion":2}`)
	if err := Bytes(sha256Of(body), body); err != nil {
		t.Errorf("Bytes with matching digest: %v", err)
	}
	if err := Bytes(sha512Of(body), body); err != nil {
		t.Errorf("Bytes with matching sha512 digest: %v", err)
	}
	if err := Bytes(sha256Of(body), flip(body, 3)); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("Bytes with altered body = %v, want ErrDigestMismatch", err)
	}
	if err := Bytes("sha256:nothex", body); !errors.Is(err, ErrInvalidDigest) {
		t.Errorf("Bytes with malformed digest = %v, want ErrInvalidDigest", err)
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}
