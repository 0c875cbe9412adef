// Package dirlock keeps a directory to one process: an exclusive lock on a
// file inside it (flock on Unix, LockFileEx on Windows), held for the
// process's life and released by the kernel when the process ends, however
// it ends, so a crash leaves no stale lock behind.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// FileName is the lock file's name inside the locked directory.
const FileName = ".airlock.lock"

// ErrHeld is returned, wrapped, when another process holds the lock.
var ErrHeld = errors.New("held by another process")

// Lock is a held lock.
type Lock struct {
	f *os.File
}

// Acquire takes dir's lock without waiting. The directory must exist. When
// another open file description holds the lock (another process, or this
// one through another Acquire), the error wraps ErrHeld and names the
// holder's pid as the holder wrote it.
func Acquire(dir string) (*Lock, error) {
	p := filepath.Join(dir, FileName)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", p, err)
	}
	held, err := tryLock(f)
	if err != nil || held {
		defer f.Close()
		if held {
			holder := "another process"
			if b, rerr := os.ReadFile(p); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
					holder = "process " + strconv.Itoa(pid)
				}
			}
			return nil, fmt.Errorf("%s is locked by %s: %w", p, holder, ErrHeld)
		}
		return nil, fmt.Errorf("locking %s: %w", p, err)
	}
	// The pid is for the message of the next process that finds the lock
	// held; the lock itself is the flock.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Release gives the lock up. The lock file stays: removing it would let a
// process that opened it just before lock a file no longer in the
// directory while a third locks a new one.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the file releases the lock
	l.f = nil
	return err
}
