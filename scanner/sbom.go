package scanner

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"
	"github.com/package-url/packageurl-go"
	"github.com/quay/claircore"
	"github.com/quay/claircore/alpine"
	"github.com/quay/claircore/aws"
	"github.com/quay/claircore/debian"
	"github.com/quay/claircore/gobin"
	"github.com/quay/claircore/java"
	"github.com/quay/claircore/nodejs"
	"github.com/quay/claircore/oracle"
	"github.com/quay/claircore/photon"
	"github.com/quay/claircore/python"
	"github.com/quay/claircore/ruby"
	"github.com/quay/claircore/sbom/spdx"
	"github.com/quay/claircore/suse"
	"github.com/quay/claircore/toolkit/types"
	"github.com/quay/claircore/ubuntu"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// SBOM returns the packages the scan of d indexed as a JSON document:
// SPDX 2.3 (FormatSPDX) or CycloneDX 1.5 (FormatCycloneDX). A digest with
// no done scan of an image (not scanned yet, failed, or not an image) is
// ErrNotScanned.
func (s *Scanner) SBOM(ctx context.Context, d digest.Digest, format string) ([]byte, error) {
	if format != FormatSPDX && format != FormatCycloneDX {
		return nil, fmt.Errorf("scanner: unknown SBOM format %q: want %s or %s", format, FormatSPDX, FormatCycloneDX)
	}
	st, err := s.Status(ctx, d)
	if err != nil {
		return nil, err
	}
	switch {
	case st.State != metadata.ScanDone:
		return nil, fmt.Errorf("scanner: %s: the scan is %s: %w", d, st.State, ErrNotScanned)
	case st.Note != "":
		return nil, fmt.Errorf("scanner: %s: %s: %w", d, st.Note, ErrNotScanned)
	}
	hash, err := claircore.ParseDigest(d.String())
	if err != nil {
		return nil, err
	}
	ir, ok, err := s.index.IndexReport(ctx, hash)
	if err != nil {
		return nil, fmt.Errorf("scanner: reading the index of %s: %w", d, unavailable(err))
	}
	if !ok || !ir.Success {
		return nil, fmt.Errorf("scanner: %s has no index report: %w", d, ErrNotScanned)
	}
	var buf bytes.Buffer
	switch format {
	case FormatSPDX:
		enc := spdx.NewDefaultEncoder(
			spdx.WithDocumentName(d.String()),
			spdx.WithDocumentNamespace(fmt.Sprintf("https://airlock.invalid/spdxdocs/%s-%s", d.Encoded(), uuid.New())),
			spdx.WithDocumentComment("Packages airlock's scanner indexed in the image "+d.String()),
			spdx.WithPURLConverter(purls{}),
		)
		enc.Creators = append(enc.Creators, spdx.Creator{Creator: "airlock", CreatorType: "Tool"})
		err = enc.Encode(ctx, &buf, ir)
	case FormatCycloneDX:
		err = cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON).SetPretty(true).
			EncodeVersion(cycloneDX(ctx, d, ir, s.clock().Format("2006-01-02T15:04:05Z")), cdx.SpecVersion1_5)
	}
	if err != nil {
		return nil, fmt.Errorf("scanner: writing the %s SBOM of %s: %w", format, d, err)
	}
	return buf.Bytes(), nil
}

// cycloneDX describes the image as a container component whose
// components are its operating system and its packages.
func cycloneDX(ctx context.Context, d digest.Digest, ir *claircore.IndexReport, now string) *cdx.BOM {
	bom := cdx.NewBOM()
	bom.SerialNumber = "urn:uuid:" + uuid.New().String()
	bom.Metadata = &cdx.Metadata{
		Timestamp: now,
		Tools: &cdx.ToolsChoice{Components: &[]cdx.Component{{
			Type: cdx.ComponentTypeApplication, Name: "airlock",
			Description: "airlock's vulnerability scanner (claircore)",
		}}},
		Component: &cdx.Component{
			BOMRef: d.String(), Type: cdx.ComponentTypeContainer, Name: d.String(),
			Hashes: &[]cdx.Hash{{Algorithm: cdx.HashAlgoSHA256, Value: d.Encoded()}},
		},
	}
	var comps []cdx.Component
	seenDist := map[string]bool{}
	seenPkg := map[string]bool{}
	for _, r := range ir.IndexRecords() {
		if ds := r.Distribution; ds != nil && !seenDist[ds.ID] {
			seenDist[ds.ID] = true
			comps = append(comps, cdx.Component{
				BOMRef: "dist-" + ds.ID, Type: cdx.ComponentTypeOS,
				Name: cmp.Or(ds.DID, ds.Name), Version: cmp.Or(ds.VersionID, ds.Version),
				Description: ds.PrettyName,
			})
		}
		p := r.Package
		if p == nil || seenPkg[p.ID] {
			continue
		}
		seenPkg[p.ID] = true
		c := cdx.Component{
			BOMRef: "pkg-" + p.ID, Type: cdx.ComponentTypeLibrary, Name: p.Name, Version: p.Version,
		}
		if u, err := (purls{}).Generate(ctx, r); err == nil {
			c.PackageURL = u.String()
		}
		var props []cdx.Property
		if p.Source != nil && p.Source.Name != "" && p.Source.Name != p.Name {
			props = append(props, cdx.Property{Name: "airlock:source-package", Value: p.Source.Name})
		}
		for _, env := range ir.Environments[p.ID] {
			if env.PackageDB != "" {
				props = append(props, cdx.Property{Name: "airlock:package-database", Value: env.PackageDB})
			}
			if l := env.IntroducedIn.String(); l != "" {
				props = append(props, cdx.Property{Name: "airlock:layer", Value: l})
			}
			break
		}
		if len(props) > 0 {
			c.Properties = &props
		}
		comps = append(comps, c)
	}
	slices.SortFunc(comps, func(a, b cdx.Component) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Version, b.Version), cmp.Compare(a.BOMRef, b.BOMRef))
	})
	bom.Components = &comps
	return bom
}

// purls names packages by package URL, choosing claircore's generator by
// the package's detector and, for distribution packages, the
// distribution.
type purls struct{}

var errNoPURL = errors.New("no package URL for this kind of package")

func (purls) Generate(ctx context.Context, r *claircore.IndexRecord) (packageurl.PackageURL, error) {
	if r.Package == nil || r.Package.Detector == nil || r.Package.Kind == types.SourcePackage {
		return packageurl.PackageURL{}, errNoPURL
	}
	did := ""
	if r.Distribution != nil {
		did = r.Distribution.DID
	}
	switch r.Package.Detector.Name {
	case "dpkg", "dpkg-distroless":
		if did == "ubuntu" {
			return ubuntu.GeneratePURL(ctx, r)
		}
		return debian.GeneratePURL(ctx, r)
	case "apk":
		return alpine.GeneratePURL(ctx, r)
	case "rpm":
		switch did {
		case "ol":
			return oracle.GeneratePURL(ctx, r)
		case "photon":
			return photon.GeneratePURL(ctx, r)
		case "amzn":
			return aws.GeneratePURL(ctx, r)
		case "sles", "opensuse-leap", "suse":
			return suse.GeneratePURL(ctx, r)
		}
		return packageurl.PackageURL{
			Type: packageurl.TypeRPM, Namespace: did, Name: r.Package.Name, Version: r.Package.Version,
			Qualifiers: packageurl.QualifiersFromMap(map[string]string{"arch": r.Package.Arch}),
		}, nil
	case "python":
		return python.GeneratePURL(ctx, r)
	case "java":
		return java.GeneratePURL(ctx, r)
	case "gobin":
		return gobin.GeneratePURL(ctx, r)
	case "ruby":
		return ruby.GeneratePURL(ctx, r)
	case "nodejs":
		return nodejs.GeneratePURL(ctx, r)
	}
	return packageurl.PackageURL{}, errNoPURL
}

func (purls) Parse(context.Context, packageurl.PackageURL) ([]*claircore.IndexRecord, error) {
	return nil, errors.New("airlock does not parse package URLs")
}
