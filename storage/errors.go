package storage

import "errors"

// ErrNotFound means the store holds no such blob (or, in storage/metadata, no
// such record). It is the signal to fetch from an upstream or, offline, to
// answer "unknown".
var ErrNotFound = errors.New("not found")
