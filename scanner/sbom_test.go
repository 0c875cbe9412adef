package scanner

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/scanner/scannertest"
)

func TestSBOM(t *testing.T) {
	t.Parallel()
	e := open(t, "", nil)
	e.run(t)
	d := e.content.addImage(t,
		scannertest.Layer(t, scannertest.Gzip, scannertest.DebianFiles(vulnerableSSL...)),
		scannertest.Layer(t, scannertest.Gzip, scannertest.AlpineFiles(scannertest.APK{Name: "busybox", Version: "1.36.1-r2", Origin: "busybox"})))
	e.enqueue(t, d)
	e.results.wait(t, d, time.Minute, isDone)

	t.Run("spdx", func(t *testing.T) {
		b, err := e.s.SBOM(t.Context(), d, FormatSPDX)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			SPDXVersion  string `json:"spdxVersion"`
			Name         string `json:"name"`
			CreationInfo struct {
				Creators []string `json:"creators"`
			} `json:"creationInfo"`
			Packages []struct {
				Name         string `json:"name"`
				VersionInfo  string `json:"versionInfo"`
				ExternalRefs []struct {
					Type    string `json:"referenceType"`
					Locator string `json:"referenceLocator"`
				} `json:"externalRefs"`
			} `json:"packages"`
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatalf("not JSON: %v\n%s", err, b)
		}
		if doc.SPDXVersion != "SPDX-2.3" || doc.Name != d.String() || !slices.Contains(doc.CreationInfo.Creators, "Tool: airlock") {
			t.Errorf("document %s / %s / %v", doc.SPDXVersion, doc.Name, doc.CreationInfo.Creators)
		}
		purls := map[string]string{}
		for _, p := range doc.Packages {
			for _, r := range p.ExternalRefs {
				if r.Type == "purl" {
					purls[p.Name+"@"+p.VersionInfo] = r.Locator
				}
			}
		}
		for pkg, want := range map[string]string{
			"libssl3@3.0.11-1~deb12u2": "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12",
			"bash@5.2.15-2+b2":         "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12",
		} {
			if purls[pkg] != want {
				t.Errorf("purl of %s = %q, want %q (all: %v)", pkg, purls[pkg], want, purls)
			}
		}
	})

	t.Run("cyclonedx", func(t *testing.T) {
		b, err := e.s.SBOM(t.Context(), d, FormatCycloneDX)
		if err != nil {
			t.Fatal(err)
		}
		var bom cdx.BOM
		if err := cdx.NewBOMDecoder(bytes.NewReader(b), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
			t.Fatalf("not CycloneDX JSON: %v\n%s", err, b)
		}
		if bom.SpecVersion != cdx.SpecVersion1_5 || bom.BOMFormat != "CycloneDX" || !strings.HasPrefix(bom.SerialNumber, "urn:uuid:") {
			t.Errorf("header: %v %s %s", bom.SpecVersion, bom.BOMFormat, bom.SerialNumber)
		}
		if c := bom.Metadata.Component; c == nil || c.Type != cdx.ComponentTypeContainer || c.Name != d.String() {
			t.Errorf("metadata component %+v", bom.Metadata.Component)
		}
		got := map[string]cdx.Component{}
		for _, c := range *bom.Components {
			got[string(c.Type)+" "+c.Name+" "+c.Version] = c
		}
		for _, key := range []string{
			"operating-system debian 12",
			"library libssl3 3.0.11-1~deb12u2",
			"library bash 5.2.15-2+b2",
		} {
			if _, ok := got[key]; !ok {
				t.Errorf("no component %q in %v", key, keys(got))
			}
		}
		if c := got["library libssl3 3.0.11-1~deb12u2"]; c.PackageURL != "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12" {
			t.Errorf("libssl3 purl %q", c.PackageURL)
		}
		if !bytes.Contains(b, []byte(`"airlock:source-package"`)) || !bytes.Contains(b, []byte(`"openssl"`)) {
			t.Errorf("the source package is not recorded:\n%s", b)
		}
	})

	t.Run("not scanned", func(t *testing.T) {
		index := e.content.putManifest([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`), "application/vnd.oci.image.index.v1+json")
		e.enqueue(t, index)
		e.results.wait(t, index, time.Minute, isDone)
		for _, tt := range []struct {
			d    digest.Digest
			want string
		}{
			{digest.FromString("unknown"), "not scanned"},
			{index, "an image index"},
		} {
			_, err := e.s.SBOM(t.Context(), tt.d, FormatCycloneDX)
			if !errors.Is(err, ErrNotScanned) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("SBOM(%s): %v, want ErrNotScanned saying %q", tt.d, err, tt.want)
			}
		}
		if _, err := e.s.SBOM(t.Context(), d, "swid"); err == nil || !strings.Contains(err.Error(), `unknown SBOM format "swid"`) {
			t.Errorf("unknown format: %v", err)
		}
	})
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
