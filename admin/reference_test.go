package admin

import (
	"strings"
	"testing"
)

func TestAdminParseReference(t *testing.T) {
	t.Parallel()
	const d = "sha256:1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b"
	tests := []struct {
		in         string
		repo, tag  string
		digest     string
		wantErr    string // substring; "" means success
		needDigest bool   // ParseDigestReference refuses it
	}{
		{in: "dockerhub/library/nginx@" + d, repo: "dockerhub/library/nginx", digest: d},
		{in: "dockerhub/library/nginx:1.25", repo: "dockerhub/library/nginx", tag: "1.25", needDigest: true},
		{in: "ghcr/a-b/c__d/e.f:v1_x-y", repo: "ghcr/a-b/c__d/e.f", tag: "v1_x-y", needDigest: true},
		{in: "my.hub/x@" + d, repo: "my.hub/x", digest: d},
		{in: "nginx@" + d, wantErr: "does not name its upstream"},
		{in: "nginx:latest", wantErr: "does not name its upstream"},
		{in: "dockerhub/library/nginx", wantErr: "add @<digest> or :<tag>"},
		{in: "dockerhub/Library/nginx:1", wantErr: `path component "Library"`},
		{in: "dockerhub/library/nginx@sha256:abc", wantErr: "invalid digest"},
		{in: "dockerhub/library/nginx@md5:" + strings.Repeat("a", 32), wantErr: "only sha256 and sha512"},
		{in: "dockerhub/library/nginx:-bad", wantErr: "invalid tag"},
		{in: "dockerhub/library/nginx:1.25@" + d, wantErr: "invalid repository"},
		{in: "dockerhub//nginx@" + d, wantErr: `path component ""`},
		{in: "@" + d, wantErr: "empty repository"},
		{in: "dockerhub/" + strings.Repeat("a", 400) + ":1", wantErr: "at most"},
		{in: "dockerhub/../etc@" + d, wantErr: `path component ".."`},
	}
	for _, tc := range tests {
		t.Run(tc.in[:min(len(tc.in), 40)], func(t *testing.T) {
			ref, err := ParseReference(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseReference(%q) = %+v, %v; want error containing %q", tc.in, ref, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseReference(%q): %v", tc.in, err)
			}
			if ref.Repository != tc.repo || ref.Tag != tc.tag || string(ref.Digest) != tc.digest {
				t.Fatalf("ParseReference(%q) = %+v; want repo %q tag %q digest %q", tc.in, ref, tc.repo, tc.tag, tc.digest)
			}
			if ref.String() != tc.in {
				t.Fatalf("String() = %q; want the input %q back", ref.String(), tc.in)
			}
			_, err = ParseDigestReference(tc.in)
			if tc.needDigest != (err != nil) {
				t.Fatalf("ParseDigestReference(%q) error = %v; want an error: %v", tc.in, err, tc.needDigest)
			}
			if err != nil && !strings.Contains(err.Error(), "name the image by digest") {
				t.Fatalf("ParseDigestReference(%q) = %v; want advice to use the digest", tc.in, err)
			}
		})
	}
}
