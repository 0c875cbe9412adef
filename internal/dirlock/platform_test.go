package dirlock

import (
	"go/build"
	"go/parser"
	"go/token"
	"path/filepath"
	"testing"
)

// TestBuildsOnEveryServePlatform: airlock serve takes the lock on every
// platform its binary builds for, so each must have a tryLock.
func TestBuildsOnEveryServePlatform(t *testing.T) {
	for _, goos := range []string{"linux", "darwin", "freebsd", "windows"} {
		ctx := build.Default
		ctx.GOOS = goos
		ctx.CgoEnabled = false
		pkg, err := ctx.ImportDir(".", 0)
		if err != nil {
			t.Errorf("GOOS=%s: %v", goos, err)
			continue
		}
		found := 0
		for _, name := range pkg.GoFiles {
			f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(pkg.Dir, name), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			if f.Scope.Lookup("tryLock") != nil {
				found++
			}
		}
		if found != 1 {
			t.Errorf("GOOS=%s: %d files define tryLock, want 1", goos, found)
		}
	}
}
