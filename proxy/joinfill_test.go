package proxy

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// TestUndeclaredReaderJoinsNoFillBoundByAnotherDeclaration: a request that
// knows no size for a blob must not read along another repository's fill
// that is bound by that repository's declaration. Any manifest on the same
// upstream can declare a wrong size for a popular layer; such a fill fails
// only once it has streamed the declared bytes (an upstream that sends no
// length), breaking every reader that joined it mid-transfer. The fill of
// the same repository, or one bound by no declaration, is fair to join.
func TestUndeclaredReaderJoinsNoFillBoundByAnotherDeclaration(t *testing.T) {
	t.Parallel()
	d := digest.FromString("layer")
	up := &Upstream{Name: "hub"}
	tests := []struct {
		name string
		fill fillKey
		repo string // the repository of the running fill
		join bool
	}{
		{"another repository's declaration", fillKey{"hub", d, 1234, ""}, "hub/attacker/x", false},
		{"own repository's declaration", fillKey{"hub", d, 1234, ""}, "hub/library/app", true},
		{"no declaration", fillKey{"hub", d, 0, ""}, "hub/attacker/x", true},
		{"another repository's private fill", fillKey{"hub", d, 0, "hub/attacker/x"}, "hub/attacker/x", false},
		{"another upstream", fillKey{"vendor", d, 0, ""}, "vendor/library/app", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := &Proxy{metrics: NewMetrics(nil)}
			p.fills.m = map[fillKey]*fill{}
			running := &fill{digest: d, upstream: tc.fill.upstream, key: tc.repo, declared: tc.fill.declared, setKey: tc.fill, refs: 1}
			p.fills.m[tc.fill] = running
			rq := &request{route: Route{Upstream: up, Repo: "library/app"}}
			f, leader := p.joinFill(t.Context(), rq, d, 0, false, false)
			if leader {
				t.Fatal("joinFill started a fill though asked not to")
			}
			if joined := f == running; joined != tc.join {
				t.Fatalf("joined = %v, want %v", joined, tc.join)
			}
		})
	}
}
