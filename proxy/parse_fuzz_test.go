package proxy

import (
	"net/http"
	"strings"
	"testing"

	"github.com/airlock-registry/airlock/verify"
)

// FuzzParseAccept: any Accept header yields at most maxAcceptTypes distinct,
// well-formed, lower-case types.
func FuzzParseAccept(f *testing.F) {
	for _, s := range []string{"", "*/*", mediaOCIIndex + ";q=0.5, " + mediaDockerV2, "a/b,,a/b, A/B", "x/y; a=\"b,c\"", strings.Repeat("t/x, ", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := parseAccept(http.Header{"Accept": {s}})
		if len(got) > maxAcceptTypes {
			t.Fatalf("%d types, over the bound of %d", len(got), maxAcceptTypes)
		}
		seen := map[string]bool{}
		for _, mt := range got {
			if !validMediaType(mt) || mt != strings.ToLower(mt) || seen[mt] {
				t.Fatalf("parseAccept(%q) gave %q in %q", s, mt, got)
			}
			seen[mt] = true
		}
	})
}

// FuzzReferencedBlobs: whatever a manifest body says, the references it
// yields are digests airlock can store and never have a negative size.
func FuzzReferencedBlobs(f *testing.F) {
	f.Add(mediaOCIManifest, `{"config":{"digest":"sha256:`+strings.Repeat("a", 64)+`","size":2},"layers":[{"digest":"sha384:ab","size":-1}]}`)
	f.Add(mediaDockerV1, `{"fsLayers":[{"blobSum":"sha256:`+strings.Repeat("b", 64)+`"}]}`)
	f.Add(mediaOCIIndex, `{"manifests":[],"layers":[{"digest":"sha256:`+strings.Repeat("c", 64)+`"}]}`)
	f.Fuzz(func(t *testing.T, mediaType, body string) {
		for _, b := range referencedBlobs(mediaType, []byte(body)) {
			if verify.Check(b.Digest) != nil || b.Size < 0 {
				t.Fatalf("referencedBlobs gave %+v", b)
			}
		}
	})
}
