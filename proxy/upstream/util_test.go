package upstream

import (
	"encoding/json"
	"strconv"
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

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
