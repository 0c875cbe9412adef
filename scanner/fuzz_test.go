package scanner

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzParseManifest feeds manifests as an upstream might send them: the
// parser never panics, and a manifest it would scan has only valid layer
// digests.
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:`+strings.Repeat("a", 64)+`","size":1},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:`+strings.Repeat("b", 64)+`","size":2}]}`), "")
	f.Add([]byte(`{"schemaVersion":2,"manifests":[]}`), "application/vnd.oci.image.index.v1+json")
	f.Add([]byte(`{"schemaVersion":1,"fsLayers":[]}`), "application/vnd.docker.distribution.manifest.v1+prettyjws")
	f.Add([]byte(`{"config":{"mediaType":"application/vnd.docker.container.image.v1+json"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}]}`), "application/vnd.docker.distribution.manifest.v2+json")
	f.Fuzz(func(t *testing.T, raw []byte, mt string) {
		img, err := parseManifest(raw, mt)
		if err != nil || img.note != "" {
			return
		}
		if len(img.layers) == 0 {
			t.Fatal("an image to scan with no layers")
		}
		for _, l := range img.layers {
			if l.Digest.Validate() != nil {
				t.Fatalf("invalid layer digest %q accepted", l.Digest)
			}
		}
	})
}

// FuzzCheckExport feeds files to the import's checker: it never panics,
// and what it accepts it spools unchanged (but for blank lines).
func FuzzCheckExport(f *testing.F) {
	f.Add([]byte(`{"Updater":"debian/updater","Fingerprint":"x","Date":"2024-01-01T00:00:00Z","Kind":"vulnerability","Ref":"6c6b3e1a-0b8e-4c39-9a4f-4e1f0e3b2c11","Vuln":{"name":"CVE-1"}}` + "\n"))
	f.Add([]byte("{}\n\n"))
	f.Add([]byte{0x1f, 0x8b, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		spool, _, err := checkExport(bytes.NewReader(in), "") // the spool is unlinked at once
		if err != nil {
			return
		}
		defer spool.Close()
		var out bytes.Buffer
		out.ReadFrom(spool)
		if bytes.HasPrefix(in, gzipMagic) || bytes.HasPrefix(in, zstdMagic) {
			return
		}
		var want bytes.Buffer
		for _, line := range bytes.SplitAfter(in, []byte("\n")) {
			if len(bytes.TrimSpace(line)) > 0 {
				want.Write(line)
			}
		}
		if !bytes.Equal(out.Bytes(), want.Bytes()) {
			t.Fatalf("spooled %q, want %q", out.Bytes(), want.Bytes())
		}
	})
}
