package storage

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// lyingReader hands out prefix, then answers every read with n and err,
// bytes or not: a source that breaks io.Reader's contract.
type lyingReader struct {
	prefix *bytes.Reader
	n      int
	err    error
	reads  int
}

func (l *lyingReader) Read(p []byte) (int, error) {
	if l.prefix.Len() > 0 {
		return l.prefix.Read(p)
	}
	l.reads++
	if l.reads > 10_000 {
		// Append should have given up long before: end the test, not
		// the machine's patience.
		return 0, io.EOF
	}
	return l.n, l.err
}

// TestSpoolAppendBrokenSource: a source that claims more bytes than the
// buffer it was given, a negative count, or nothing again and again fails
// Append with the reason, instead of crashing the process (a slice out of
// range on the fill's goroutine) or spinning a core for ever; and what
// came before is spooled and hashed exactly as written.
func TestSpoolAppendBrokenSource(t *testing.T) {
	t.Parallel()
	prefix, _ := randomBlob(t, appendPiece+4321)
	for _, tc := range []struct {
		name string
		n    int
		err  error
		want error
	}{
		{"more than its buffer", appendPiece + 1, nil, errInvalidRead},
		{"more than its buffer, with EOF", appendPiece + 1, io.EOF, errInvalidRead},
		{"negative count", -1, nil, errInvalidRead},
		{"negative count with an error", -5, errors.New("boom"), errInvalidRead},
		{"nothing for ever", 0, nil, io.ErrNoProgress},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := stores[0].open(t)
			s, err := b.NewSpool(digest.FromBytes(prefix))
			if err != nil {
				t.Fatal(err)
			}
			defer b.Discard(s)
			src := &lyingReader{prefix: bytes.NewReader(prefix), n: tc.n, err: tc.err}
			var n int64
			done := make(chan struct{})
			go func() {
				defer close(done)
				defer func() {
					if r := recover(); r != nil {
						err = errors.New("panicked")
						t.Errorf("Append panicked on a broken source: %v", r)
					}
				}()
				n, err = s.Append(src, nil)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Append still running on a broken source")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Append = %v; want an error wrapping %v", err, tc.want)
			}
			if src.reads >= 10_000 {
				t.Fatalf("Append read %d times before giving up", src.reads)
			}
			if n != int64(len(prefix)) || s.Size() != n {
				t.Fatalf("Append = %d bytes, Size %d; want the %d before the broken read", n, s.Size(), len(prefix))
			}
			if err := s.Verify(); err != nil {
				t.Fatalf("the spool did not hash exactly what it wrote: %v", err)
			}
		})
	}
}
