package scannertest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Deb is an installed Debian package. Source is the source package it was
// built from when its name differs (libssl3 from openssl): Debian's
// security data names source packages.
type Deb struct{ Name, Version, Source string }

// APK is an installed Alpine package; Origin is its source package.
type APK struct{ Name, Version, Origin string }

// debianOSRelease is Debian 12's /etc/os-release.
const debianOSRelease = `PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
`

// alpineOSRelease is Alpine 3.18's /etc/os-release.
const alpineOSRelease = `NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.18.4
PRETTY_NAME="Alpine Linux v3.18"
HOME_URL="https://alpinelinux.org/"
`

// DebianFiles is a Debian 12 root with pkgs installed: os-release, the
// dpkg status database and each package's file list, with one file per
// package where its list says.
func DebianFiles(pkgs ...Deb) map[string]string {
	var status strings.Builder
	files := map[string]string{"etc/os-release": debianOSRelease}
	for _, p := range pkgs {
		fmt.Fprintf(&status, "Package: %s\nStatus: install ok installed\nPriority: optional\nSection: libs\n"+
			"Installed-Size: 100\nMaintainer: Debian <debian@example.org>\nArchitecture: amd64\n", p.Name)
		if p.Source != "" {
			fmt.Fprintf(&status, "Source: %s\n", p.Source)
		}
		fmt.Fprintf(&status, "Version: %s\nDescription: the %s package\n\n", p.Version, p.Name)
		files["var/lib/dpkg/info/"+p.Name+".list"] = "/.\n/usr\n/usr/lib/" + p.Name + "\n"
		files["usr/lib/"+p.Name] = p.Name + "\n"
	}
	files["var/lib/dpkg/status"] = status.String()
	return files
}

// AlpineFiles is an Alpine 3.18 root with pkgs in its apk database.
func AlpineFiles(pkgs ...APK) map[string]string {
	var db strings.Builder
	for _, p := range pkgs {
		fmt.Fprintf(&db, "C:Q1abcdefghijklmnopqrstuvwxyz0123=\nP:%s\nV:%s\nA:x86_64\nS:100\nI:200\nT:the %s package\n"+
			"U:https://example.org\nL:MIT\no:%s\nm:Alpine <alpine@example.org>\nt:1700000000\n\n", p.Name, p.Version, p.Name, p.Origin)
	}
	return map[string]string{
		"etc/os-release":       alpineOSRelease,
		"etc/alpine-release":   "3.18.4\n",
		"lib/apk/db/installed": db.String(),
	}
}

// debianBase is a Debian 12 base system as a slim image has it, with the
// versions of bookworm's 12.5 point release.
var debianBase = []Deb{
	{"base-files", "12.4+deb12u5", ""}, {"bash", "5.2.15-2+b2", ""}, {"coreutils", "9.1-1", ""},
	{"debconf", "1.5.82", ""}, {"dpkg", "1.21.22", ""}, {"findutils", "4.9.0-4", ""},
	{"gcc-12-base", "12.2.0-14", "gcc-12"}, {"grep", "3.8-5", ""}, {"gzip", "1.12-1", ""},
	{"libacl1", "2.3.1-3", "acl"}, {"libc-bin", "2.36-9+deb12u4", "glibc"}, {"libc6", "2.36-9+deb12u4", "glibc"},
	{"libgcc-s1", "12.2.0-14", "gcc-12"}, {"liblzma5", "5.4.1-0.2", "xz-utils"}, {"libpcre2-8-0", "10.42-1", "pcre2"},
	{"libselinux1", "3.4-1+b6", "libselinux"}, {"libssl3", "3.0.11-1~deb12u2", "openssl"},
	{"libstdc++6", "12.2.0-14", "gcc-12"}, {"libzstd1", "1.5.4+dfsg2-5", "libzstd"}, {"login", "1:4.13+dfsg1-1+b1", "shadow"},
	{"mawk", "1.3.4.20200120-3.1", ""}, {"ncurses-base", "6.4-4", "ncurses"}, {"perl-base", "5.36.0-7+deb12u1", "perl"},
	{"sed", "4.9-1", ""}, {"tar", "1.34+dfsg-1.2+deb12u1", ""}, {"tzdata", "2024a-0+deb12u1", ""},
	{"util-linux", "2.38.1-5+b1", ""}, {"zlib1g", "1:1.2.13.dfsg-1", "zlib"},
}

// DebianBase returns n installed packages: a Debian 12 base system
// (libc6, libssl3 from openssl, zlib1g, ...), and past its 28 packages
// made-up libraries, airlock-fixture-NNN, which no data names.
func DebianBase(n int) []Deb {
	out := make([]Deb, 0, n)
	out = append(out, debianBase[:min(n, len(debianBase))]...)
	for i := len(out); i < n; i++ {
		out = append(out, Deb{Name: fmt.Sprintf("airlock-fixture-%03d", i), Version: fmt.Sprintf("1.%d-1", i)})
	}
	return out
}

// Compression is how a layer's tar is stored.
type Compression string

// The compressions a layer can have.
const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "none"
)

// modTime is every entry's modification time: the same files make the
// same layer.
var modTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Tar is a layer's tar of files (path → content), parent directories
// first, entries sorted.
func Tar(tb testing.TB, files map[string]string) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	for _, n := range names {
		var parents []string
		for d := path.Dir(n); d != "." && d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: modTime}); err != nil {
				tb.Fatalf("scannertest: tar: %v", err)
			}
		}
		body := files[n]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(body)), ModTime: modTime}); err != nil {
			tb.Fatalf("scannertest: tar: %v", err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			tb.Fatalf("scannertest: tar: %v", err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatalf("scannertest: tar: %v", err)
	}
	return buf.Bytes()
}

// Layer makes an OCI layer of files, stored with comp.
func Layer(tb testing.TB, comp Compression, files map[string]string) v1.Layer {
	tb.Helper()
	raw := Tar(tb, files)
	opener := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }
	var l v1.Layer
	var err error
	switch comp {
	case Gzip:
		l, err = tarball.LayerFromOpener(opener, tarball.WithMediaType(types.OCILayer))
	case Zstd:
		l, err = tarball.LayerFromOpener(opener, tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	case Uncompressed:
		l = static.NewLayer(raw, types.OCIUncompressedLayer)
	default:
		tb.Fatalf("scannertest: unknown compression %q", comp)
	}
	if err != nil {
		tb.Fatalf("scannertest: layer: %v", err)
	}
	return l
}

// Image is an OCI image of layers for linux on this machine's
// architecture (clients check the config's platform against their own),
// whose config lists the layers' diff IDs.
func Image(tb testing.TB, layers ...v1.Layer) v1.Image {
	tb.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		tb.Fatalf("scannertest: image: %v", err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		tb.Fatalf("scannertest: image config: %v", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Cmd = []string{"/bin/true"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		tb.Fatalf("scannertest: image config: %v", err)
	}
	return img
}
