package metadata

import (
	"fmt"
	"os"
)

// DiskSize returns the size of the index file. The index holds every
// manifest body, so it counts toward the cache's maximum size beside the
// blobs.
func (db *DB) DiskSize() (int64, error) {
	fi, err := os.Stat(db.bolt.Path())
	if err != nil {
		return 0, fmt.Errorf("metadata: measuring the index: %w", err)
	}
	return fi.Size(), nil
}
