package storage

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"
)

// trickle returns what r holds in reads of random small sizes, the way a
// body arrives from a slow upstream.
type trickle struct {
	r   io.Reader
	rnd *rand.Rand
}

func (t *trickle) Read(p []byte) (int, error) {
	n := 1 + t.rnd.IntN(70_000)
	return t.r.Read(p[:min(len(p), n)])
}

// TestSpoolAppend spools bodies that arrive in every shape through
// Append and checks that each byte is in the file before it is
// announced, and that the spool hashed exactly what it wrote.
func TestSpoolAppend(t *testing.T) {
	t.Parallel()
	content, d := randomBlob(t, 3*appendPiece+12_345)
	for _, tc := range []struct {
		name string
		body func() io.Reader
	}{
		{"whole", func() io.Reader { return bytes.NewReader(content) }},
		{"trickle", func() io.Reader { return &trickle{bytes.NewReader(content), rand.New(rand.NewPCG(1, 2))} }},
		{"half reads", func() io.Reader { return iotest.HalfReader(bytes.NewReader(content)) }},
		{"data with EOF", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(content)) }},
		{"one byte", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(content[:5000])) }},
	} {
		for _, st := range stores {
			t.Run(tc.name+"/"+st.name, func(t *testing.T) {
				t.Parallel()
				want, wd := content, d
				if tc.name == "one byte" {
					want = content[:5000]
					wd = digest.FromBytes(want)
				}
				b := st.open(t)
				s, err := b.NewSpool(wd)
				if err != nil {
					t.Fatal(err)
				}
				defer b.Discard(s)
				var last int64
				n, err := s.Append(tc.body(), func(size int64) {
					if size <= last {
						t.Errorf("written(%d) after written(%d)", size, last)
					}
					// What is announced must be readable already.
					got := make([]byte, size-last)
					if _, err := s.ReadAt(got, last); err != nil || !bytes.Equal(got, want[last:size]) {
						t.Errorf("bytes %d-%d announced before they are in the file: %v", last, size, err)
					}
					last = size
				})
				if err != nil || n != int64(len(want)) || s.Size() != n || last != n {
					t.Fatalf("Append = %d, %v; Size %d, last announced %d; want %d", n, err, s.Size(), last, len(want))
				}
				if err := s.Verify(); err != nil {
					t.Fatalf("Verify after Append: %v", err)
				}
				if err := b.Commit(t.Context(), wd, s); err != nil {
					t.Fatal(err)
				}
				r, _, err := b.Open(t.Context(), wd)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("stored blob: %d bytes, %v", len(got), err)
				}
			})
		}
	}
}

// TestSpoolAppendReadError: a body that fails part-way leaves what came
// before it spooled and hashed, and the failure is the body's own.
func TestSpoolAppendReadError(t *testing.T) {
	t.Parallel()
	content, _ := randomBlob(t, appendPiece+777)
	prefix := content[:appendPiece+100]
	boom := errors.New("connection reset")
	b := stores[0].open(t)
	// The spool is for the prefix, so Verify says whether exactly the
	// bytes before the failure were hashed.
	s, err := b.NewSpool(digest.FromBytes(prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Discard(s)
	n, err := s.Append(io.MultiReader(bytes.NewReader(prefix), iotest.ErrReader(boom)), nil)
	if err != boom || n != int64(len(prefix)) || s.Size() != n {
		t.Fatalf("Append = %d, %v; Size %d; want %d, the body's error", n, err, s.Size(), len(prefix))
	}
	if err := s.Verify(); err != nil {
		t.Fatalf("the bytes before the failure were not hashed as written: %v", err)
	}
}

// TestSpoolAppendAfterTheEnd: a spool that was committed, closed or
// discarded takes no more bytes, and Append says why without reading its
// source or leaving a file behind.
func TestSpoolAppendAfterTheEnd(t *testing.T) {
	t.Parallel()
	content, d := randomBlob(t, 1000)
	for _, tc := range []struct {
		name string
		end  func(b *Blobs, s *Spool) error
	}{
		{"commit", func(b *Blobs, s *Spool) error { return b.Commit(t.Context(), d, s) }},
		{"close", func(_ *Blobs, s *Spool) error { return s.Close() }},
		{"discard", func(b *Blobs, s *Spool) error { return b.Discard(s) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := stores[0].open(t)
			s, err := b.NewSpool(d)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Discard(s)
			if _, err := s.Write(content); err != nil {
				t.Fatal(err)
			}
			if err := tc.end(b, s); err != nil {
				t.Fatal(err)
			}
			src := bytes.NewReader(content)
			n, err := s.Append(src, func(int64) { t.Error("bytes announced after the end") })
			if err == nil || !strings.Contains(err.Error(), "write after commit, discard or close") || n != 0 {
				t.Fatalf("Append after %s = %d, %v; want the spool's end as the reason", tc.name, n, err)
			}
			if src.Len() != len(content) || s.Size() != int64(len(content)) {
				t.Fatalf("Append after %s read %d bytes of its source; Size %d", tc.name, len(content)-src.Len(), s.Size())
			}
			if tc.name == "discard" {
				if files := spoolFiles(t, b); len(files) != 0 {
					t.Fatalf("spool files after Append to a discarded spool: %v", files)
				}
			}
		})
	}
}

// TestSpoolOpenReader: each reader gets a handle with a position of its
// own, and handles keep reading the download after its spool was
// committed (renamed), but not after it was discarded.
func TestSpoolOpenReader(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("OpenReader reopens through /proc/self/fd")
	}
	b := stores[0].open(t)
	content, d := randomBlob(t, 100_000)
	s, err := b.NewSpool(d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(content[:50_000]); err != nil {
		t.Fatal(err)
	}
	r1, err := s.OpenReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(r1, head); err != nil || !bytes.Equal(head, content[:1000]) {
		t.Fatalf("first reader: %v", err)
	}
	r2, err := s.OpenReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := io.ReadFull(r2, head); err != nil || !bytes.Equal(head, content[:1000]) {
		t.Fatalf("a second reader does not start at the beginning: %v", err)
	}
	// The rest arrives and the spool becomes the blob; both readers go on
	// where they were.
	if _, err := s.Write(content[50_000:]); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(t.Context(), d, s); err != nil {
		t.Fatal(err)
	}
	r3, err := s.OpenReader()
	if err != nil {
		t.Fatalf("OpenReader after Commit: %v", err)
	}
	defer r3.Close()
	for i, r := range []io.Reader{r1, r2} {
		if rest, err := io.ReadAll(r); err != nil || !bytes.Equal(rest, content[1000:]) {
			t.Fatalf("reader %d after Commit: %d bytes, %v", i+1, len(rest), err)
		}
	}
	if all, err := io.ReadAll(r3); err != nil || !bytes.Equal(all, content) {
		t.Fatalf("reader opened after Commit: %d bytes, %v", len(all), err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r, err := s.OpenReader(); err == nil {
		r.Close()
		t.Fatal("OpenReader after Close succeeded")
	}

	// A discarded spool: a handle opened before finds it ended, not its
	// bytes, whose room Discard gave back.
	other, od := randomBlob(t, 10_000)
	s2, err := b.NewSpool(od)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Write(other); err != nil {
		t.Fatal(err)
	}
	r4, err := s2.OpenReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r4.Close()
	if err := b.Discard(s2); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(r4); err != nil || len(got) != 0 {
		t.Fatalf("reader of a discarded spool: %d bytes, %v; want none", len(got), err)
	}
}
