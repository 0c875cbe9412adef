package console

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// maxTrailScan bounds the audit records searched for one image's trail.
const maxTrailScan = 20_000

// maxPlatforms bounds the platforms an image page lists: an index is the
// upstream's to write, and one of 25,000 entries (4 MiB) would make the
// page megabytes long and slow to build.
const maxPlatforms = 100

func shownPlatforms(img metadata.Image) []metadata.Platform {
	return img.Platforms[:min(len(img.Platforms), maxPlatforms)]
}

// facts are what an image is, from its cached manifest: its kind, layers
// and the sizes the manifest declares.
type facts struct {
	MediaType string
	Index     bool
	Config    digest.Digest
	Layers    int
	// Size is the config and layers as the manifest declares them
	// (compressed): what a pull transfers.
	Size      int64
	Platforms []platformFacts
}

type platformFacts struct {
	metadata.Platform
	Cached bool
	Layers int
	Size   int64
}

// manifestShape is the part of an image manifest or index facts reads.
type manifestShape struct {
	MediaType string `json:"mediaType"`
	Config    *struct {
		Digest digest.Digest `json:"digest"`
		Size   int64         `json:"size"`
	} `json:"config"`
	Layers []struct {
		Size int64 `json:"size"`
	} `json:"layers"`
	Manifests []json.RawMessage `json:"manifests"`
}

// facts reads img's manifest (and its platforms' when cached). nil when
// the console has no Manifests or the manifest is not cached.
func (c *Console) facts(ctx context.Context, img metadata.Image) *facts {
	if c.manifests == nil {
		return nil
	}
	rec, err := c.manifests.Manifest(ctx, img.Digest)
	if err != nil {
		if !errors.Is(err, storage.ErrNotFound) {
			c.log.LogAttrs(ctx, slog.LevelWarn, "console cannot read a manifest",
				slog.String("digest", img.Digest.String()), slog.String("error", err.Error()))
		}
		return nil
	}
	var m manifestShape
	if json.Unmarshal(rec.Body, &m) != nil {
		return nil
	}
	f := &facts{MediaType: cmpOr(rec.MediaType, m.MediaType, img.MediaType)}
	if len(m.Manifests) > 0 || len(img.Platforms) > 0 {
		f.Index = true
		for _, p := range shownPlatforms(img) {
			pf := platformFacts{Platform: p}
			if prec, err := c.manifests.Manifest(ctx, p.Digest); err == nil {
				var pm manifestShape
				if json.Unmarshal(prec.Body, &pm) == nil {
					pf.Cached, pf.Layers, pf.Size = true, len(pm.Layers), declaredSize(pm)
				}
			}
			f.Platforms = append(f.Platforms, pf)
		}
		return f
	}
	if m.Config != nil {
		f.Config = m.Config.Digest
	}
	f.Layers, f.Size = len(m.Layers), declaredSize(m)
	return f
}

func declaredSize(m manifestShape) int64 {
	var n int64
	if m.Config != nil {
		n += m.Config.Size
	}
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

func cmpOr(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// formState is what an action form held, shown again with its error.
type formState struct {
	Action  string
	Reason  string
	Expires string
	Error   string
}

type imageData struct {
	Image       metadata.Image
	Ref         string
	URL         string
	CachedBytes *int64
	Facts       *facts
	Signature   []metadata.Reason
	// VulnReasons are the reasons of type vulnerability; the panel of
	// the scan lists them among its findings when there is a scan.
	VulnReasons []metadata.Reason
	Other       []metadata.Reason
	// Vulns is the Vulnerabilities panel; nil when the image has no scan.
	Vulns *vulnsData
	// IndexURL is the page of the index a platform record was pulled
	// through.
	IndexURL string
	// PlatformStates are the states of the platforms listed that have
	// records (and pages) of their own.
	PlatformStates map[digest.Digest]metadata.State
	// Platforms are the first maxPlatforms of the index's; MorePlatforms
	// counts the rest.
	Platforms     []metadata.Platform
	MorePlatforms int
	Trail         []metadata.AuditRecord
	TrailMore     bool
	Form          formState
	CanRelease    bool
	CanBlock      bool
	CanUnblock    bool
}

func (d imageData) title() string { return d.Image.Repository + "@" + shortDigest(d.Image.Digest) }

// imageRoute handles /ui/images/<upstream>/<repo>@<digest>[/<action>].
func (c *Console) imageRoute(w http.ResponseWriter, r *http.Request, v *view, path string) {
	refText, action := path, ""
	if at := strings.IndexByte(path, '@'); at >= 0 {
		if slash := strings.IndexByte(path[at:], '/'); slash >= 0 {
			refText, action = path[:at+slash], path[at+slash+1:]
		}
	} else {
		c.fail(w, r, v, errorPage(http.StatusNotFound,
			"An image page names the image by digest: %simages/<upstream>/<repository>@<digest>.", Prefix))
		return
	}
	ref, err := admin.ParseDigestReference(refText)
	if err != nil {
		c.fail(w, r, v, errorPage(http.StatusBadRequest, "%v.", err))
		return
	}
	switch action {
	case "":
		c.get(w, r, v, func(w http.ResponseWriter, r *http.Request, v *view) error {
			return c.showImage(w, r, v, ref, http.StatusOK, formState{})
		})
		return
	case "sbom":
		c.get(w, r, v, func(w http.ResponseWriter, r *http.Request, _ *view) error { return c.sbom(w, r, ref) })
		return
	}
	if !isAction(action) {
		c.notFound(w, r, v)
		return
	}
	if r.Method != http.MethodPost {
		c.methodNotAllowed(w, r, v, "POST")
		return
	}
	if err := c.act(w, r, v, ref, action); err != nil {
		c.fail(w, r, v, err)
	}
}

// showImage renders the image page; form carries a refused action's input
// and its error.
func (c *Console) showImage(w http.ResponseWriter, r *http.Request, v *view, ref admin.Reference, status int, form formState) error {
	ctx := r.Context()
	img, err := c.store.Image(ctx, ref.Repository, ref.Digest)
	if errors.Is(err, storage.ErrNotFound) {
		return errorPage(http.StatusNotFound, "Airlock has not seen %s.", ref)
	}
	if err != nil {
		return err
	}
	d := imageData{Image: img, Ref: ref.String(), URL: imageURL(img.Repository, img.Digest), Form: form,
		Facts: c.facts(ctx, img), Platforms: shownPlatforms(img)}
	d.MorePlatforms = len(img.Platforms) - len(d.Platforms)
	d.Vulns = c.vulns(img)
	if img.Index != "" {
		d.IndexURL = imageURL(img.Repository, img.Index)
	}
	d.PlatformStates = c.platformStates(ctx, img, d.Platforms)
	for _, rs := range img.Reasons {
		if rs.Type == metadata.ReasonManual && img.Override != nil && rs.Actor == img.Override.By {
			continue // the override's own card says it, with its end
		}
		switch rs.Type {
		case metadata.ReasonSignature:
			d.Signature = append(d.Signature, rs)
		case metadata.ReasonVulnerability:
			d.VulnReasons = append(d.VulnReasons, rs)
		default:
			d.Other = append(d.Other, rs)
		}
	}
	if c.cache != nil {
		if n, err := c.cache.CachedBytes(ctx, img.Repository, img.Digest); err == nil {
			d.CachedBytes = &n
		}
	}
	blocked := img.Override != nil && img.Override.Action == metadata.ActionBlock
	d.CanUnblock = blocked
	d.CanBlock = !blocked
	d.CanRelease = !blocked && img.State != metadata.StateApproved
	_, _, d.TrailMore, err = c.scanBack(ctx, 0, maxTrailScan, func(rec metadata.AuditRecord) bool {
		if rec.Repository == img.Repository && rec.Digest == img.Digest {
			d.Trail = append(d.Trail, rec)
		}
		return len(d.Trail) < 200
	})
	if err != nil {
		return err
	}
	c.render(w, r, status, "image", v, d)
	return nil
}
