//go:build windows

package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/windows"
)

// FileName is the lock file's name inside the locked directory.
const FileName = ".airlock.lock"

// ErrHeld is returned, wrapped, when another process holds the lock.
var ErrHeld = errors.New("held by another process")

// Lock is a held lock.
type Lock struct {
	f *os.File
}

// lockOffsetHigh places the locked byte far past the pid, so that the
// holder's pid stays readable: Windows locks are mandatory.
const lockOffsetHigh = 0x7fffffff

// Acquire takes dir's lock without waiting. The directory must exist. When
// another handle holds the lock (another process, or this one through
// another Acquire), the error wraps ErrHeld and names the holder's pid as
// the holder wrote it. Windows releases the lock when the process ends.
func Acquire(dir string) (*Lock, error) {
	p := filepath.Join(dir, FileName)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", p, err)
	}
	ol := &windows.Overlapped{OffsetHigh: lockOffsetHigh}
	err = windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, ol)
	if err != nil {
		defer f.Close()
		if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
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
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Release gives the lock up. The lock file stays.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the handle releases the lock
	l.f = nil
	return err
}
