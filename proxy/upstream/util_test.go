package upstream

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

func digestOf(t *testing.T, s string) digest.Digest {
	t.Helper()
	d, err := digest.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
