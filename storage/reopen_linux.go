package storage

import (
	"os"
	"strconv"
)

// reopen opens f's file again, read-only, with a position of its own.
// Through /proc/self/fd it finds the file itself, not whatever is now at
// its path: a spool renamed into place by Commit, or removed by Discard.
func reopen(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var name string
	if err := rc.Control(func(fd uintptr) { name = "/proc/self/fd/" + strconv.FormatUint(uint64(fd), 10) }); err != nil {
		return nil, err
	}
	return os.Open(name)
}
