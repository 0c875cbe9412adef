package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/scanner"
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Image is an image as the API shows it: the store's record, with tags
// and reasons always arrays, plus what the cache holds of it.
type Image struct {
	metadata.Image
	// CachedBytes is the size of the image's manifests and blobs in the
	// cache; absent when the server was not given a Cache or could not
	// measure it.
	CachedBytes *int64 `json:"cachedBytes,omitempty"`
	// Vulnerabilities counts the findings of the image's scan; absent
	// when it has none. In the image list it stands in for
	// scan.findings, which only GET of one image carries.
	Vulnerabilities *VulnerabilitySummary `json:"vulnerabilities,omitempty"`
}

// ImageList is the answer to GET /api/v1/images.
type ImageList struct {
	Images []Image `json:"images"`
	// Next, when set, is the after= of the next page.
	Next string `json:"next,omitempty"`
}

// AuditList is the answer to GET /api/v1/audit.
type AuditList struct {
	Records []metadata.AuditRecord `json:"records"`
	// Next is the after= of the next page, or 0 when this page ended the log.
	Next uint64 `json:"next"`
}

// ChangeRequest is the body of a POST to an image action or a DELETE.
type ChangeRequest struct {
	Reason string `json:"reason,omitempty"`
	// Expires ends a release: a date (through that day, UTC), an RFC 3339
	// time or a duration from now ("72h", "30d"); empty means never.
	Expires string `json:"expires,omitempty"`
}

// Paging bounds, as the store applies them.
const (
	defaultLimit = 100
	maxLimit     = 1000
	// maxBody bounds a request body: a reason is a sentence.
	maxBody = 64 << 10
)

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	query := metadata.ImageQuery{
		State:      metadata.State(q.Get("state")),
		Upstream:   q.Get("upstream"),
		Repository: q.Get("repository"),
		After:      q.Get("after"),
	}
	if !validState(query.State) {
		return errorf(CodeInvalid, "unknown state %q; the states are pending, approved, quarantined, released and blocked", query.State)
	}
	if query.Upstream != "" {
		if err := checkUpstream(query.Upstream); err != nil {
			return &apiError{Code: CodeInvalid, Message: err.Error()}
		}
	}
	if query.Repository != "" {
		if err := checkRepository(query.Repository); err != nil {
			return &apiError{Code: CodeInvalid, Message: err.Error()}
		}
	}
	limit, err := parseLimit(q.Get("limit"))
	if err != nil {
		return err
	}
	query.Limit = limit
	page, err := s.store.Images(r.Context(), query)
	if err != nil {
		return err
	}
	list := ImageList{Images: make([]Image, 0, len(page.Images)), Next: page.Next}
	for _, img := range page.Images {
		out := s.present(r.Context(), img)
		if out.Scan != nil && out.Scan.Findings != nil {
			// An image may have thousands of findings; a page of a
			// thousand images must stay a page.
			sc := *out.Scan
			sc.Findings = nil
			out.Scan = &sc
		}
		list.Images = append(list.Images, out)
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func validState(st metadata.State) bool {
	switch st {
	case "", metadata.StatePending, metadata.StateApproved, metadata.StateQuarantined, metadata.StateReleased, metadata.StateBlocked:
		return true
	}
	return false
}

func parseLimit(s string) (int, error) {
	if s == "" {
		return defaultLimit, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxLimit {
		return 0, errorf(CodeInvalid, "limit %q is not a number from 1 to %d", s, maxLimit)
	}
	return n, nil
}

func (s *Server) showImage(w http.ResponseWriter, r *http.Request, ref Reference) error {
	img, err := s.image(r.Context(), ref)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.present(r.Context(), img))
	return nil
}

// resolveTag finds the digest ref's tag last resolved to: the tag record
// when there is one, else the image whose tags name it (the gate records
// those as it decides, before the tag record's own write lands).
func (s *Server) resolveTag(ctx context.Context, ref Reference) (digest.Digest, error) {
	if s.tags != nil {
		rec, err := s.tags.Tag(ctx, ref.Repository, ref.Tag)
		if err == nil {
			return rec.Digest, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return "", err
		}
	}
	var found *metadata.Image
	q := metadata.ImageQuery{Repository: ref.Repository, Limit: maxLimit}
	for {
		page, err := s.store.Images(ctx, q)
		if err != nil {
			return "", err
		}
		for i, img := range page.Images {
			if slices.Contains(img.Tags, ref.Tag) && (found == nil || img.UpdatedAt.After(found.UpdatedAt)) {
				found = &page.Images[i]
			}
		}
		if page.Next == "" || page.Next == q.After {
			break
		}
		q.After = page.Next
	}
	if found == nil {
		return "", errorf(CodeNotFound, "no tag %s: airlock has not resolved it; `airlock images list --repository %s` lists the images it knows",
			ref, ref.Repository)
	}
	return found.Digest, nil
}

// present makes the API's view of an image.
func (s *Server) present(ctx context.Context, img metadata.Image) Image {
	if img.Tags == nil {
		img.Tags = []string{}
	}
	if img.Reasons == nil {
		img.Reasons = []metadata.Reason{}
	}
	out := Image{Image: img, Vulnerabilities: Summarize(img)}
	if s.cache != nil {
		n, err := s.cache.CachedBytes(ctx, img.Repository, img.Digest)
		switch {
		case err == nil:
			out.CachedBytes = &n
		case errors.Is(err, storage.ErrNotFound):
			var zero int64
			out.CachedBytes = &zero
		default:
			// The listing is still worth having without the size.
			s.log.LogAttrs(ctx, slog.LevelWarn, "cannot measure an image's cached bytes",
				slog.String("repository", img.Repository), slog.String("digest", string(img.Digest)),
				slog.String("error", err.Error()))
		}
	}
	return out
}

// change carries out an action on one image and logs it with its actor.
func (s *Server) change(w http.ResponseWriter, r *http.Request, actor, action string, ref Reference) error {
	var req ChangeRequest
	if err := decodeBody(w, r, &req); err != nil {
		return err
	}
	var expires time.Time
	switch action {
	case "release", "block", "unblock":
		if strings.TrimSpace(req.Reason) == "" {
			return errorf(CodeInvalid, "%s needs a reason: say why, for the audit log", action)
		}
	case "rescan":
		if req.Reason != "" {
			return errorf(CodeInvalid, "rescan takes no reason: it only re-runs the checks")
		}
	}
	if req.Expires != "" && action != "release" {
		return errorf(CodeInvalid, "only a release expires; %s takes no expiry", action)
	}
	if action == "release" {
		var err error
		if expires, err = ParseExpiry(req.Expires, s.now()); err != nil {
			return &apiError{Code: CodeInvalid, Message: err.Error()}
		}
	}
	img, err := s.apply(r.Context(), actor, action, ref, req.Reason, expires)
	if err != nil {
		return err // ServeHTTP logs it with the actor
	}
	attrs := []slog.Attr{
		slog.String("actor", actor), slog.String("action", action),
		slog.String("repository", ref.Repository), slog.String("digest", string(ref.Digest)),
		slog.String("reason", req.Reason),
	}
	if !expires.IsZero() {
		attrs = append(attrs, slog.Time("expires", expires))
	}
	if action == "delete" {
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "admin change", attrs...)
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	attrs = append(attrs, slog.String("state", string(img.State)))
	s.log.LogAttrs(r.Context(), slog.LevelInfo, "admin change", attrs...)
	writeJSON(w, http.StatusOK, s.present(r.Context(), img))
	return nil
}

func (s *Server) apply(ctx context.Context, actor, action string, ref Reference, reason string, expires time.Time) (metadata.Image, error) {
	repo, d := ref.Repository, ref.Digest
	switch action {
	case "release":
		return s.decider.Release(ctx, repo, d, actor, reason, expires)
	case "block":
		return s.decider.Block(ctx, repo, d, actor, reason)
	case "unblock":
		return s.decider.Unblock(ctx, repo, d, actor, reason)
	case "rescan":
		return s.decider.Rescan(ctx, repo, d, actor)
	case "delete":
		return metadata.Image{}, s.decider.Delete(ctx, repo, d, actor, reason)
	}
	return metadata.Image{}, errorf(CodeNotFound, "no image action %q", action)
}

// decodeBody reads a bounded JSON object into v. An empty body leaves v
// as it is: every field of a change is optional at this level.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil {
		// Exactly one object: trailing data is a client bug worth hearing of.
		if _, err = dec.Token(); errors.Is(err, io.EOF) {
			return nil
		}
		return errorf(CodeInvalid, "the request body holds more than one JSON object")
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return errorf(CodeTooLarge, "the request body is larger than %d bytes", maxBody)
	}
	return errorf(CodeInvalid, "the request body is not the JSON this endpoint takes: %v", err)
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var after uint64
	if a := q.Get("after"); a != "" {
		var err error
		if after, err = strconv.ParseUint(a, 10, 64); err != nil {
			return errorf(CodeInvalid, "after %q is not a record number", a)
		}
	}
	limit, err := parseLimit(q.Get("limit"))
	if err != nil {
		return err
	}
	recs, err := s.store.Audit(r.Context(), after, limit)
	if err != nil {
		return err
	}
	list := AuditList{Records: recs}
	if list.Records == nil {
		list.Records = []metadata.AuditRecord{}
	}
	if len(recs) == limit {
		list.Next = recs[len(recs)-1].Seq
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

// verifyAudit answers 200 with the check whatever it found: a broken chain
// is a finding, not a failed request.
func (s *Server) verifyAudit(w http.ResponseWriter, r *http.Request) error {
	check, err := s.store.VerifyAudit(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, check)
	return nil
}

// classify maps an error to the API error the client gets. Admins are
// authenticated, so the messages of expected failures (an unknown image, a
// conflicting state) are passed on as the gate wrote them.
func classify(err error) *apiError {
	if e, ok := asAPIError(err); ok {
		return e
	}
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return &apiError{Code: CodeNotFound, Message: err.Error(), Err: err}
	case errors.Is(err, gate.ErrConflict):
		return &apiError{Code: CodeConflict, Message: after(err.Error(), gate.ErrConflict), Err: err}
	case errors.Is(err, gate.ErrInvalid):
		return &apiError{Code: CodeInvalid, Message: after(err.Error(), gate.ErrInvalid), Err: err}
	case errors.Is(err, scanner.ErrUnavailable):
		// The cause names the database's address; the log has it.
		return &apiError{Code: CodeUnavailable, RetryAfter: retryUnavailable, Err: err,
			Message: "the vulnerability scanner's database cannot be reached; try again shortly (the airlock log says why)"}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &apiError{Code: CodeUnavailable, Message: "the request was cancelled or timed out before it finished", Err: err}
	}
	return &apiError{Code: CodeInternal, Message: "internal error; see the airlock log", Err: err}
}

// after is the part of msg after the sentinel's own text: the gate writes
// "updating image X: conflict: X is blocked (...)", and the sentence after
// the class is the one an admin needs; it names the image again.
func after(msg string, sentinel error) string {
	if _, rest, ok := strings.Cut(msg, sentinel.Error()+": "); ok && rest != "" {
		return rest
	}
	return msg
}
