package config

import (
	"strings"
	"testing"
)

// A policy glob that can match no repository airlock serves governs
// nothing: every image it was meant to check would be served unchecked,
// and nothing would say so. Such globs are refused with the fix.
func TestPolicyGlobsThatMatchNothingAreRefused(t *testing.T) {
	t.Parallel()
	const up = "upstreams: [{name: hcl, url: \"https://registry.hcl.example\"}, {name: dockerhub, url: \"https://registry-1.docker.io\"}]\n"
	for _, tc := range []struct {
		glob, want string
	}{
		{"hlc/*", `"hlc" is not an upstream`},
		{"HCL/*", "uppercase"},
		{"hcl/Vendor/*", "uppercase"},
		{"app", "no repository"},
		{"dockerhub/nginx", "dockerhub/library/nginx"},
		{"quay*", "no upstream name starts with"},
		{"", "empty glob"},
		{"hcl/*", ""},
		{"hcl/vendor/app", ""},
		{"h?l/*", ""},
		{"*", ""},
		{"*/nginx", ""},
		{"dock*/library/*", ""},
		{"dockerhub/library/nginx", ""},
		{"dockerhub/bitnami/*", ""},
		{"dockerhub/*", ""},
	} {
		_, err := Parse("p.yaml", []byte(up+"policies: [{name: p, match: [\""+tc.glob+"\"], pins: /p}]\n"))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.glob, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: error %v, want one with %q", tc.glob, err, tc.want)
		}
	}
}
