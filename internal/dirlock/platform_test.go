package dirlock

import (
	"go/build"
	"testing"
)

// TestBuildsOnEveryServePlatform: airlock serve takes the lock on every
// platform its binary builds for, so the package must have an
// implementation for each.
func TestBuildsOnEveryServePlatform(t *testing.T) {
	for _, goos := range []string{"linux", "darwin", "freebsd", "windows"} {
		ctx := build.Default
		ctx.GOOS = goos
		ctx.CgoEnabled = false
		pkg, err := ctx.ImportDir(".", 0)
		if err != nil || len(pkg.GoFiles) == 0 {
			t.Errorf("GOOS=%s: no implementation (%v)", goos, err)
		}
	}
}
