package storage

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/verify"
)

// spoolSuffix marks files Recover may remove from the spool directory.
const spoolSuffix = ".spool"

// Spool is a download in progress: a local file that one writer appends to
// while any number of readers read what has been written so far.
//
// A spool ends with Commit (it becomes the blob) or Discard (it is thrown
// away). Either way its open file handle lives on until Close or Discard, so
// readers that are still streaming it to clients are not cut off by the
// commit.
type Spool struct {
	f      *os.File
	path   string
	digest digest.Digest
	blobs  *Blobs

	// h belongs to the single writer; size and reserved are read by
	// everyone.
	h        hash.Hash
	size     atomic.Int64
	reserved atomic.Int64 // bytes Reserve preallocated, counted in SpoolBytes

	mu        sync.Mutex
	committed bool // the file is now the blob (local) or copied to it (remote)
	removed   bool // the spool path no longer exists
	closed    bool
}

// NewSpool creates a uniquely named spool file for a download of d.
func (b *Blobs) NewSpool(d digest.Digest) (*Spool, error) {
	if err := verify.Check(d); err != nil {
		return nil, err
	}
	var h hash.Hash = sha256.New()
	if d.Algorithm() == digest.SHA512 {
		h = sha512.New()
	}
	// Create and register under one lock, so a concurrent Recover never sees
	// the new file before it is known to be live.
	b.mu.Lock()
	defer b.mu.Unlock()
	f, err := os.CreateTemp(b.spoolDir, string(d.Algorithm())+"-"+d.Encoded()[:16]+"-*"+spoolSuffix)
	if err != nil {
		// Out of inodes is as full as out of blocks.
		return nil, fmt.Errorf("creating spool for %s in %s: %w", d, b.spoolDir, noSpace(err))
	}
	s := &Spool{f: f, path: f.Name(), digest: d, blobs: b, h: h}
	b.spools[s.path] = s
	return s, nil
}

// SpoolBytes returns the bytes that downloads in progress hold on the
// spool volume: for each live spool, what it has written or reserved,
// whichever is more. A committed spool no longer counts (it is a blob now,
// which Walk reports), nor does a discarded one.
func (b *Blobs) SpoolBytes() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	for _, s := range b.spools {
		n += max(s.size.Load(), s.reserved.Load())
	}
	return n
}

// Reserve makes room for n bytes of the download before they arrive, so
// that a full volume fails the fill now, with an error wrapping ErrNoSpace,
// instead of after its clients were sent part of the blob. Call it when the
// size is known (from Content-Length or the referencing manifest).
//
// Reserve preallocates without changing the spool's size or content: the
// file still holds exactly the bytes written, so readers, Verify and
// Commit see nothing of the reservation. Where the filesystem cannot
// preallocate (EOPNOTSUPP; any system but Linux) it does nothing and
// returns nil, and a full volume shows up in Write as before. Only the
// writer may call it.
func (s *Spool) Reserve(n int64) error {
	if n <= s.reserved.Load() || n <= s.size.Load() {
		return nil
	}
	s.mu.Lock()
	done := s.committed || s.closed
	s.mu.Unlock()
	if done {
		return fmt.Errorf("spool %s for %s: reserve after commit, discard or close", s.path, s.digest)
	}
	if err := preallocate(s.f, n); err != nil {
		return fmt.Errorf("spool %s for %s: reserving %d bytes: %w", s.path, s.digest, n, noSpace(err))
	}
	s.reserved.Store(n)
	return nil
}

// Write appends p to the spool. Only one goroutine may write, and it must be
// the one that later calls Commit.
func (s *Spool) Write(p []byte) (int, error) {
	if err := s.writable(); err != nil {
		return 0, err
	}
	n, err := s.f.Write(p)
	s.h.Write(p[:n])
	// Publish the size only after the bytes are in the file, so a reader
	// that sees the new size finds them with ReadAt.
	s.size.Add(int64(n))
	if err != nil {
		return n, fmt.Errorf("spool %s for %s: %w", s.path, s.digest, noSpace(err))
	}
	return n, nil
}

func (s *Spool) writable() error {
	s.mu.Lock()
	done := s.committed || s.closed
	s.mu.Unlock()
	if done {
		return fmt.Errorf("spool %s for %s: write after commit, discard or close", s.path, s.digest)
	}
	return nil
}

// Append hands what it read to its hashing goroutine in pieces of
// appendPiece bytes, appendPieces of them in flight: one being read into
// and the rest waiting to be hashed. Handing over whole pieces, however
// little each read brings, keeps the hashing goroutine to one wake-up per
// piece when the upstream trickles; and a download arrives faster than a
// core hashes it, so more pieces would only wait longer.
const (
	appendPiece  = 256 << 10
	appendPieces = 4
)

// Append reads r until io.EOF or an error, appending what it reads to the
// spool as Write does, and returns the number of bytes appended. It is
// how a download is spooled at the speed of the link: what each read
// brings is written to the file and published (Size grows, then written
// is called with the new size, on Append's goroutine) before it is hashed,
// by a goroutine of Append's own that works through the bytes in order
// while the next ones are read and written. Hashing is most of the CPU a
// download costs; this way it no longer stands between the bytes' arrival
// and their readers, and it runs on another core than the copying.
//
// Append returns once every appended byte is hashed, so Verify and Commit
// see them all. An error reading r is returned as it is; an error writing
// the file is wrapped as Write's are. A reader that breaks io.Reader's
// contract fails Append with an error wrapping errInvalidRead (a count
// outside its buffer) or io.ErrNoProgress (empty reads, again and again),
// after what it read before is appended. Only the writer may call it.
func (s *Spool) Append(r io.Reader, written func(size int64)) (int64, error) {
	if err := s.writable(); err != nil {
		return 0, err
	}
	free := make(chan []byte, appendPieces)
	for range appendPieces {
		free <- make([]byte, appendPiece)
	}
	full := make(chan []byte, appendPieces)
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		for b := range full {
			s.h.Write(b)
			free <- b[:cap(b)] // never blocks: free holds every piece
		}
	}()
	var n int64
	var err error
	b, used := <-free, 0
	for err == nil {
		m, rerr := s.read(r, b[used:])
		if m > 0 {
			w, werr := s.f.Write(b[used : used+m])
			s.size.Add(int64(w))
			n += int64(w)
			used += w
			if werr != nil {
				err = fmt.Errorf("spool %s for %s: %w", s.path, s.digest, noSpace(werr))
				break
			}
			if written != nil {
				written(s.size.Load())
			}
		}
		switch {
		case rerr == io.EOF:
			err = io.EOF
		case rerr != nil:
			err = rerr
		case used == len(b):
			full <- b
			b, used = <-free, 0
		}
	}
	full <- b[:used]
	close(full)
	<-hashed
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// errInvalidRead is a read that claims fewer than no bytes, or more than
// the buffer it was given holds.
var errInvalidRead = errors.New("source returned a byte count outside its buffer")

// maxEmptyReads is how many reads in a row may bring nothing, and no error,
// before Append gives up on its source, as bufio.Reader does.
const maxEmptyReads = 100

// read reads r once into p, holding it to io.Reader's contract: a source
// is whatever the network hands over, and a count past p would crash the
// process with it, an endless run of empty reads spin a core for ever.
func (s *Spool) read(r io.Reader, p []byte) (int, error) {
	for range maxEmptyReads {
		n, err := r.Read(p)
		if n < 0 || n > len(p) {
			return 0, fmt.Errorf("spool %s for %s: %d bytes read into %d: %w", s.path, s.digest, n, len(p), errInvalidRead)
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, fmt.Errorf("spool %s for %s: %d reads brought nothing: %w", s.path, s.digest, maxEmptyReads, io.ErrNoProgress)
}

// ReadAt reads written bytes at off. It uses pread and is safe concurrently
// with Write and with other readers. Reading past Size returns io.EOF.
func (s *Spool) ReadAt(p []byte, off int64) (int, error) {
	return s.f.ReadAt(p, off)
}

// OpenReader returns a read-only handle of the reader's own on the
// spool's file, positioned at its start: a handle that net/http can pass to
// sendfile, which reads from the handle's position, so each reader needs
// its own. It reads on through Commit, the blob's bytes; after Discard it
// finds the spool empty, the file's room given back. The caller closes
// it. Where the file cannot be reopened (no /proc, a system other than
// Linux) it returns an error and readers use ReadAt instead.
func (s *Spool) OpenReader() (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("spool %s for %s: open after close", s.path, s.digest)
	}
	return reopen(s.f)
}

// Sync flushes written bytes to stable storage. Some filesystems (NFS, and
// any with delayed allocation under a quota) report a full volume only
// here, as an error wrapping ErrNoSpace.
func (s *Spool) Sync() error {
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("spool %s for %s: syncing: %w", s.path, s.digest, noSpace(err))
	}
	return nil
}

// Size returns the number of bytes written so far.
func (s *Spool) Size() int64 { return s.size.Load() }

// Path returns the spool file's path. After a local Commit the file lives on
// at the blob path instead; handles opened on Path before then stay valid.
func (s *Spool) Path() string { return s.path }

// Digest returns the digest the spool was created for.
func (s *Spool) Digest() digest.Digest { return s.digest }

// sum is the digest of everything written.
// Verify reports whether the bytes written so far are the blob: nil when
// they hash to its digest, an error wrapping verify.ErrDigestMismatch
// otherwise. It lets a caller release a verified download to its readers
// before the slower, durable Commit. Only the writer may call it.
func (s *Spool) Verify() error {
	if got := s.sum(); got != s.digest {
		return fmt.Errorf("spool for %s holds %s over %d bytes: %w", s.digest, got, s.Size(), verify.ErrDigestMismatch)
	}
	return nil
}

func (s *Spool) sum() digest.Digest {
	return digest.NewDigestFromEncoded(s.digest.Algorithm(), hex.EncodeToString(s.h.Sum(nil)))
}

// Close releases the spool's file handle. Call it once no reader needs the
// spool any more, after Commit or Discard; it does not remove anything and
// may be called more than once.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeLocked()
}

func (s *Spool) closeLocked() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("closing spool %s: %w", s.path, err)
	}
	return nil
}

// forget removes the spool from the live set Recover respects.
func (s *Spool) forget() {
	s.blobs.mu.Lock()
	delete(s.blobs.spools, s.path)
	s.blobs.mu.Unlock()
}

// Discard removes an unfinished or failed spool and closes its handle.
// Readers still streaming it get errors, or, through handles of their own
// (OpenReader), find it ended: it is emptied before it is removed, because
// an open handle keeps an unlinked file's blocks, its reservation too, for
// as long as it stays open, and a reader whose client stopped reading
// keeps it open as long as the client likes. Discarding a committed spool
// only closes the handle: the blob stays. Discard may be called more than
// once.
func (b *Blobs) Discard(s *Spool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if !s.committed && !s.removed {
		if err := os.Truncate(s.path, 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("emptying spool %s: %w", s.path, err))
		}
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing spool %s: %w", s.path, err))
		}
		s.removed = true
	}
	s.forget()
	errs = append(errs, s.closeLocked())
	return errors.Join(errs...)
}
