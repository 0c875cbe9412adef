package scannertest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/quay/claircore"
	"github.com/quay/claircore/alpine"
	"github.com/quay/claircore/apk"
	"github.com/quay/claircore/dpkg"
	"github.com/quay/claircore/osrelease"
)

// initLayer hands claircore l's uncompressed tar, as airlock's realizer
// does, and closes it when the test ends.
func initLayer(t *testing.T, l v1.Layer) *claircore.Layer {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	var cl claircore.Layer
	desc := &claircore.LayerDescription{Digest: d.String(), MediaType: "application/vnd.oci.image.layer.v1.tar"}
	if err := cl.Init(t.Context(), desc, bytes.NewReader(raw)); err != nil {
		t.Fatalf("claircore refuses the layer: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return &cl
}

// TestClaircoreReadsTheLayers runs claircore's own package and
// distribution scanners over layers of each compression: they find the
// distribution and every package as they would in a real image.
func TestClaircoreReadsTheLayers(t *testing.T) {
	t.Parallel()
	debs := DebianBase(100)
	apks := []APK{{"busybox", "1.36.1-r2", "busybox"}, {"musl", "1.2.4-r2", "musl"}}
	for _, comp := range []Compression{Gzip, Zstd, Uncompressed} {
		t.Run(string(comp), func(t *testing.T) {
			t.Parallel()
			deb := initLayer(t, Layer(t, comp, DebianFiles(debs...)))
			dists, err := new(osrelease.Scanner).Scan(t.Context(), deb)
			if err != nil || len(dists) != 1 || dists[0].PrettyName != Bookworm.PrettyName || dists[0].VersionID != Bookworm.VersionID {
				t.Errorf("os-release of the Debian layer: %+v, %v; want %s", dists, err, Bookworm.PrettyName)
			}
			pkgs, err := new(dpkg.Scanner).Scan(t.Context(), deb)
			if err != nil {
				t.Fatalf("dpkg scanner: %v", err)
			}
			var got []string
			for _, p := range pkgs {
				got = append(got, p.Name+" "+p.Version)
				if p.Name == "libssl3" && (p.Source == nil || p.Source.Name != "openssl") {
					t.Errorf("libssl3's source: %+v, want openssl", p.Source)
				}
			}
			var want []string
			for _, d := range debs {
				want = append(want, d.Name+" "+d.Version)
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("dpkg scanner found %d packages, want the %d installed:\n got %v\nwant %v", len(got), len(want), got, want)
			}

			alp := initLayer(t, Layer(t, comp, AlpineFiles(apks...)))
			adists, err := new(alpine.DistributionScanner).Scan(t.Context(), alp)
			if err != nil || len(adists) != 1 || adists[0].Version != "3.18" || adists[0].DID != Alpine318.DID {
				t.Errorf("distribution of the Alpine layer: %+v, %v; want %s", adists, err, Alpine318.PrettyName)
			}
			apkgs, err := new(apk.Scanner).Scan(t.Context(), alp)
			if err != nil || len(apkgs) != len(apks) || apkgs[0].Name != "busybox" || apkgs[0].Version != "1.36.1-r2" {
				t.Errorf("apk scanner: %+v, %v; want busybox and musl", apkgs, err)
			}
		})
	}
}

// TestLayersAreReproducible: the same files make the same layer, so two
// images built on one base share it; different files do not.
func TestLayersAreReproducible(t *testing.T) {
	t.Parallel()
	digestOf := func(l v1.Layer) v1.Hash {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	files := DebianFiles(DebianBase(10)...)
	for _, comp := range []Compression{Gzip, Zstd, Uncompressed} {
		a, b := digestOf(Layer(t, comp, files)), digestOf(Layer(t, comp, files))
		if a != b {
			t.Errorf("%s: one set of files made layers %s and %s", comp, a, b)
		}
		if c := digestOf(Layer(t, comp, DebianFiles(DebianBase(11)...))); c == a {
			t.Errorf("%s: different files made the same layer %s", comp, c)
		}
	}
	base := Layer(t, Gzip, files)
	top := Layer(t, Gzip, map[string]string{"app/run": "#!/bin/sh\n"})
	img := Image(t, base, top)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture == "" || len(cfg.RootFS.DiffIDs) != 2 {
		t.Errorf("image config: os %q arch %q diff IDs %v; want linux, this machine's, two", cfg.OS, cfg.Architecture, cfg.RootFS.DiffIDs)
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 2 || digestOf(ls[0]) != digestOf(base) {
		t.Errorf("image layers %v (%v), want the base first", ls, err)
	}
	if mt, _ := img.MediaType(); mt != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("image media type %q", mt)
	}
}

// TestExportIsJSONLines checks the export's shape: one JSON record a
// line, each naming its updater, and both updaters' vulnerabilities
// present.
func TestExportIsJSONLines(t *testing.T) {
	t.Parallel()
	raw := Export(t,
		Update{Updater: DebianUpdater, Fingerprint: "1", Vulns: []*claircore.Vulnerability{
			DebianVuln("CVE-2024-5535", "openssl", "3.0.14-1~deb12u1", "medium", claircore.High),
		}},
		Update{Updater: AlpineUpdater, Fingerprint: "1", Vulns: []*claircore.Vulnerability{
			AlpineVuln("CVE-2023-42363", "busybox", "1.36.1-r6"),
		}},
	)
	sc := bufio.NewScanner(bytes.NewReader(raw))
	seen := map[string][]string{}
	for sc.Scan() {
		var rec struct {
			Updater string
			Kind    string
			Vuln    *struct{ Name string }
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if rec.Vuln != nil {
			seen[rec.Updater] = append(seen[rec.Updater], rec.Vuln.Name)
		}
	}
	if got := seen[DebianUpdater]; !slices.Equal(got, []string{"CVE-2024-5535"}) {
		t.Errorf("debian records: %v", got)
	}
	if got := seen[AlpineUpdater]; !slices.Equal(got, []string{"CVE-2023-42363"}) {
		t.Errorf("alpine records: %v", got)
	}
	if !strings.HasSuffix(string(raw), "\n") {
		t.Error("the export does not end its last line")
	}
}
