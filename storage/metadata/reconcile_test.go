package metadata

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestDiskSize(t *testing.T) {
	t.Parallel()
	db := openTemp(t)
	t.Cleanup(func() { db.Close() })
	before, err := db.DiskSize()
	if err != nil || before <= 0 {
		t.Fatalf("DiskSize of a new index = %d, %v", before, err)
	}
	body := make([]byte, 1<<20)
	for i := range 8 {
		binary.BigEndian.PutUint64(body, uint64(i))
		rec := ManifestRecord{Digest: digest.FromBytes(body), MediaType: "application/vnd.oci.image.manifest.v1+json", Body: body}
		if err := db.PutManifest(t.Context(), fmt.Sprintf("dockerhub/library/m%d", i), rec); err != nil {
			t.Fatal(err)
		}
	}
	after, err := db.DiskSize()
	if err != nil || after < before+8<<20 {
		t.Fatalf("DiskSize after 8 MiB of manifests = %d, %v; want at least %d", after, err, before+8<<20)
	}
}
