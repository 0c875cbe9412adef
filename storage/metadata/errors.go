package metadata

import "errors"

// ErrUnavailable means the metadata store could not answer: a database
// that is down, unreachable or refusing airlock. Unlike storage.ErrNotFound
// it says nothing about the record, so a caller must not take it as a miss;
// the proxy answers 503 and the client retries. The embedded bbolt store
// never returns it.
var ErrUnavailable = errors.New("the metadata store is unavailable")
