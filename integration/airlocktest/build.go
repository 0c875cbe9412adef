package airlocktest

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// Binary is a built airlock executable.
type Binary struct {
	Path string
}

// Build compiles ./cmd/airlock of the enclosing module into dir. Call it
// once per test binary (from TestMain) and share the result: a build takes
// seconds.
func Build(ctx context.Context, dir string) (*Binary, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return nil, fmt.Errorf("find the module root with `go env GOMOD`: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if root == "." || root == "" {
		return nil, fmt.Errorf("not inside a Go module (go env GOMOD is empty)")
	}
	out := filepath.Join(dir, "airlock")
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/airlock")...)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/airlock in %s: %w\n%s", root, err, msg)
	}
	return &Binary{Path: out}, nil
}
