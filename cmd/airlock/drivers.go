package main

// The blob storage drivers selectable by storage.driver. distribution/v3
// registers its drivers with its factory when their packages load; naming
// them here, in the one place that picks concrete implementations, keeps
// that registration out of every other package.
import (
	_ "github.com/distribution/distribution/v3/registry/storage/driver/azure"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/gcs"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)
