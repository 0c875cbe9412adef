package metadata_test

import (
	"path/filepath"
	"testing"

	"github.com/airlock-registry/airlock/storage/metadata"
	"github.com/airlock-registry/airlock/storage/metadata/metadatatest"
)

func TestContentIndex(t *testing.T) {
	t.Parallel()
	metadatatest.RunContentIndex(t, func(t *testing.T) metadatatest.ContentIndex {
		db, err := metadata.Open(filepath.Join(t.TempDir(), "airlock.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := db.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return db
	})
}
