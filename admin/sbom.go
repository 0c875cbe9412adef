package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// SBOMs gives the software bill of materials of a scanned manifest: the
// packages its scan indexed. *scanner.Scanner implements it.
type SBOMs interface {
	// SBOM returns d's packages as a JSON document in format
	// (scanner.FormatSPDX or scanner.FormatCycloneDX). Its errors wrap
	// scanner.ErrNotScanned when the scanner has not indexed d, and
	// scanner.ErrUnavailable when its database cannot be reached.
	SBOM(ctx context.Context, d digest.Digest, format string) ([]byte, error)
}

// SBOMContentType is the media type of an SBOM in format, and whether
// format is one airlock writes.
func SBOMContentType(format string) (string, bool) {
	switch format {
	case scanner.FormatSPDX:
		return "application/spdx+json", true
	case scanner.FormatCycloneDX:
		return "application/vnd.cyclonedx+json", true
	}
	return "", false
}

// SBOMFormat is the format a request's format parameter names: SPDX when
// empty, else an error that lists the formats.
func SBOMFormat(format string) (string, error) {
	if format == "" {
		return scanner.FormatSPDX, nil
	}
	if _, ok := SBOMContentType(format); !ok {
		return "", fmt.Errorf("unknown SBOM format %q; the formats are %s and %s", format, scanner.FormatSPDX, scanner.FormatCycloneDX)
	}
	return format, nil
}

// scanningOff is the answer when the server was given no SBOM source.
const scanningOff = "airlock scans no images, so it has no SBOM of any: vulnerability scanning is off " +
	"(set scanner.database in airlock's configuration to turn it on)"

// retryUnavailable is the Retry-After, in seconds, of an answer that the
// scanner's database is unavailable.
const retryUnavailable = 30

// FetchSBOM reads img's SBOM from sboms (nil: scanning is off), refusing
// an index, which is not scanned itself. Its errors are the API's, so the
// console shows the sentences the CLI prints (see [Describe]).
func FetchSBOM(ctx context.Context, sboms SBOMs, img metadata.Image, format string) ([]byte, error) {
	if sboms == nil {
		return nil, &apiError{Code: CodeNotFound, Message: scanningOff}
	}
	ref := img.Repository + "@" + string(img.Digest)
	if IsIndex(img) {
		return nil, errorf(CodeNotFound, "%s is an image index: airlock scans its platforms one by one; ask for the SBOM of one of them%s",
			ref, platformRefs(img))
	}
	doc, err := sboms.SBOM(ctx, img.Digest, format)
	if errors.Is(err, scanner.ErrNotScanned) {
		return nil, &apiError{Code: CodeNotFound, Message: notScanned(img), Err: err}
	}
	if err != nil {
		return nil, err
	}
	return doc, nil
}

// IsIndex reports whether img is an image index (or a Docker manifest
// list), which is not scanned itself.
func IsIndex(img metadata.Image) bool {
	switch img.MediaType {
	case "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json":
		return true
	}
	return len(img.Platforms) > 0
}

// platformRefs lists a few of an index's platforms as references.
func platformRefs(img metadata.Image) string {
	if len(img.Platforms) == 0 {
		return ""
	}
	const shown = 4
	var parts []string
	for _, p := range img.Platforms[:min(shown, len(img.Platforms))] {
		name := p.OS + "/" + p.Architecture
		if p.Variant != "" {
			name += "/" + p.Variant
		}
		parts = append(parts, fmt.Sprintf("%s@%s (%s)", img.Repository, p.Digest, name))
	}
	s := ": " + strings.Join(parts, ", ")
	if more := len(img.Platforms) - shown; more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}

// notScanned says why img has no SBOM yet and what to do.
func notScanned(img metadata.Image) string {
	ref := img.Repository + "@" + string(img.Digest)
	s := img.Scan
	switch {
	case s == nil:
		return fmt.Sprintf("%s has not been scanned: airlock scans the images of repositories a policy with vulnerability checks covers, "+
			"and none covered %s when it was seen", ref, img.Repository)
	case s.State == metadata.ScanQueued || s.State == metadata.ScanRunning:
		return fmt.Sprintf("%s has no SBOM yet: its scan is %s; ask again when `airlock images show %s` says done", ref, s.State, ref)
	case s.State == metadata.ScanFailed:
		return fmt.Sprintf("%s has no SBOM: its scan failed (%s); `airlock rescan %s` scans it again", ref, s.Error, ref)
	}
	return fmt.Sprintf("%s has no SBOM: the scanner holds no index of its packages (its database may have been replaced since the scan); "+
		"`airlock rescan %s` indexes it again", ref, ref)
}

// sbom serves GET <image>/sbom?format=spdx|cyclonedx.
func (s *Server) sbom(w http.ResponseWriter, r *http.Request, ref Reference) error {
	format, err := SBOMFormat(r.URL.Query().Get("format"))
	if err != nil {
		return &apiError{Code: CodeInvalid, Message: err.Error()}
	}
	if s.sboms == nil {
		return &apiError{Code: CodeNotFound, Message: scanningOff}
	}
	img, err := s.image(r.Context(), ref)
	if err != nil {
		return err
	}
	doc, err := FetchSBOM(r.Context(), s.sboms, img, format)
	if err != nil {
		return err
	}
	ct, _ := SBOMContentType(format)
	h := w.Header()
	h.Set("Content-Type", ct)
	h.Set("Content-Length", strconv.Itoa(len(doc)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(doc)
	return nil
}

// image reads the image ref names, resolving a tag.
func (s *Server) image(ctx context.Context, ref Reference) (metadata.Image, error) {
	d := ref.Digest
	if d == "" {
		var err error
		if d, err = s.resolveTag(ctx, ref); err != nil {
			return metadata.Image{}, err
		}
	}
	img, err := s.store.Image(ctx, ref.Repository, d)
	if errors.Is(err, storage.ErrNotFound) {
		return metadata.Image{}, errorf(CodeNotFound, "no image %s@%s: airlock has not seen it", ref.Repository, d)
	}
	return img, err
}
