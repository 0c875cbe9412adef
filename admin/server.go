package admin

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/storage/metadata"
)

// Store is what the API reads: images and the audit log. It never writes
// through it; changes go through the [Decider].
type Store interface {
	Image(ctx context.Context, repo string, d digest.Digest) (metadata.Image, error)
	Images(ctx context.Context, q metadata.ImageQuery) (metadata.ImagePage, error)
	Audit(ctx context.Context, after uint64, limit int) ([]metadata.AuditRecord, error)
	VerifyAudit(ctx context.Context) (metadata.AuditCheck, error)
}

// Decider carries out an admin's decisions (the gate). It checks them
// against the image's state, writes the state with its audit record, and
// answers with errors wrapping storage.ErrNotFound (404), gate.ErrConflict
// (409) or gate.ErrInvalid (400).
type Decider interface {
	Release(ctx context.Context, repo string, d digest.Digest, actor, reason string, expires time.Time) (metadata.Image, error)
	Block(ctx context.Context, repo string, d digest.Digest, actor, reason string) (metadata.Image, error)
	Unblock(ctx context.Context, repo string, d digest.Digest, actor, reason string) (metadata.Image, error)
	Rescan(ctx context.Context, repo string, d digest.Digest, actor string) (metadata.Image, error)
	Delete(ctx context.Context, repo string, d digest.Digest, actor, reason string) error
}

// Tags resolves a tag to the digest it last resolved to, for
// `images show <repo>:<tag>`. *metadata.DB implements it.
type Tags interface {
	Tag(ctx context.Context, repo, tag string) (metadata.TagRecord, error)
}

// Cache says how many bytes of an image (its manifests and the blobs they
// reference) the cache holds.
type Cache interface {
	CachedBytes(ctx context.Context, repo string, d digest.Digest) (int64, error)
}

// Options configure a [Server]. Store and Decider are required.
type Options struct {
	Store   Store
	Decider Decider
	// Tags resolves tags in image references from the tag records; nil
	// (or a tag record not written yet) falls back to the images' own tags.
	Tags Tags
	// Cache, when set, adds "cachedBytes" to every image.
	Cache Cache
	// SBOMs, when set, serves the SBOM of scanned images; nil (scanning
	// is off) answers 404 with a sentence saying so.
	SBOMs SBOMs
	// TokenFile is admin.tokenFile. Empty disables the API: every request
	// is answered 401 with a message saying so.
	TokenFile string
	// Logger receives a line per change and per refused authentication;
	// nil discards them.
	Logger *slog.Logger
	// Now is the clock for expiries; nil means time.Now.
	Now func() time.Time
	// Throttle limits wrong tokens per client. Give the console the same
	// one, so that neither is a way around the other's limit. nil: a
	// throttle of the API's own.
	Throttle *Throttle
}

// Server serves the admin API under /api/v1/. Mount it with
// mux.Handle("/api/v1/", srv).
type Server struct {
	store    Store
	decider  Decider
	tags     Tags
	cache    Cache
	sboms    SBOMs
	tokens   *Tokens
	throttle *Throttle
	// logs holds back the refusals nobody's token caused (see
	// TokensUnusable) to a line a minute.
	logs *LogEvery
	log  *slog.Logger
	now  func() time.Time
}

// New returns a Server. It does not read the token file: that happens on
// each request (cheaply, when unchanged), so the API starts even while the
// Secret is still being mounted and says what is wrong when asked.
func New(o Options) (*Server, error) {
	if o.Store == nil || o.Decider == nil {
		return nil, errors.New("admin: Options.Store and Options.Decider are required")
	}
	s := &Server{store: o.Store, decider: o.Decider, tags: o.Tags, cache: o.Cache, sboms: o.SBOMs, log: o.Logger, now: o.Now,
		tokens: NewTokens(o.TokenFile), throttle: o.Throttle}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.throttle == nil {
		s.throttle = NewThrottle(s.now, s.log)
	}
	s.logs = NewLogEvery(ThrottleWindow, s.now)
	return s, nil
}

// Prefix is the path the API is served under.
const Prefix = "/api/v1/"

// ServeHTTP authenticates the request, then routes it. Authentication comes
// first so that an unauthenticated client learns nothing, not even which
// paths exist.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	actor, err := s.authenticate(r)
	if err != nil {
		e := classify(err)
		level := slog.LevelWarn
		attrs := []slog.Attr{slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.String("remote", r.RemoteAddr), slog.String("error", e.Error())}
		switch {
		case e.Code == CodeTooManyRequests || errors.Is(err, errNoToken) || errors.Is(err, errGone):
			// Neither is a checked guess: the throttle logged the client
			// once as it began refusing it, and a request without a
			// token is a client not configured yet (or anyone at all). A
			// line each would let whoever sends them fill the log;
			// wrong tokens, five a minute per client at most, are logged.
			// Nor is a request that went away while its check waited.
			level = slog.LevelDebug
		case TokensUnusable(err):
			// airlock's own configuration refuses every token, and no
			// throttle counts these: the operator needs a line, not one
			// per request.
			if ok, held := s.logs.Allow("tokens", e.Error()); !ok {
				level = slog.LevelDebug
			} else if held > 0 {
				attrs = append(attrs, slog.Int("held_back", held))
			}
		}
		s.log.LogAttrs(r.Context(), level, "admin API request refused", attrs...)
		writeError(w, e)
		return
	}
	if err := s.route(w, r, actor); err != nil {
		s.fail(w, r, actor, err)
	}
}

// fail writes err, classifying errors that are not already API errors. A
// refused change is logged with its actor, as a change is: the log shows
// who tried what, not only who did it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, actor string, err error) {
	e := classify(err)
	attrs := []slog.Attr{slog.String("actor", actor), slog.String("method", r.Method),
		slog.String("path", r.URL.Path), slog.Int("status", e.Code.Status()), slog.String("error", err.Error())}
	switch {
	case e.Code == CodeInternal || e.Code == CodeUnavailable:
		s.log.LogAttrs(r.Context(), slog.LevelError, "admin API request failed", attrs...)
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "admin change refused", attrs...)
	}
	writeError(w, e)
}

// route dispatches on the path below Prefix.
func (s *Server) route(w http.ResponseWriter, r *http.Request, actor string) error {
	rest, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok {
		return errorf(CodeNotFound, "no admin API endpoint at %q; the API is under %s", r.URL.Path, Prefix)
	}
	switch {
	case rest == "images":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		return s.listImages(w, r)
	case strings.HasPrefix(rest, "images/"):
		return s.routeImage(w, r, actor, strings.TrimPrefix(rest, "images/"))
	case rest == "audit":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		return s.listAudit(w, r)
	case rest == "audit/verify":
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		return s.verifyAudit(w, r)
	}
	return errorf(CodeNotFound, "no admin API endpoint at %q; see /api/v1/images and /api/v1/audit", r.URL.Path)
}

// actions are the changes POSTed to an image's path.
var actions = map[string]bool{"release": true, "block": true, "unblock": true, "rescan": true}

// sbomPath is the sub-resource of an image that GETs its SBOM.
const sbomPath = "sbom"

// splitImagePath splits <ref>[/<action>] after images/. A digest holds no
// '/', so one after the '@' starts the action; a tag holds none either, so
// "<repo>:<tag>/sbom" is the SBOM of a tagged image, while "<repo>/sbom"
// is a repository named sbom.
func splitImagePath(path string) (refText, action string) {
	if at := strings.IndexByte(path, '@'); at >= 0 {
		if slash := strings.IndexByte(path[at:], '/'); slash >= 0 {
			return path[:at+slash], path[at+slash+1:]
		}
		return path, ""
	}
	i := strings.LastIndexByte(path, '/')
	if i < 0 {
		return path, ""
	}
	switch last := path[i+1:]; {
	case actions[last]:
		return path[:i], last
	case last == sbomPath && strings.LastIndexByte(path[:i], ':') > strings.LastIndexByte(path[:i], '/'):
		return path[:i], last
	}
	return path, ""
}

// routeImage handles /api/v1/images/<ref>[/<action>].
func (s *Server) routeImage(w http.ResponseWriter, r *http.Request, actor, path string) error {
	refText, action := splitImagePath(path)
	if action == sbomPath {
		if err := allow(r, http.MethodGet); err != nil {
			return err
		}
		ref, err := ParseReference(refText)
		if err != nil {
			return &apiError{Code: CodeInvalid, Message: err.Error()}
		}
		return s.sbom(w, r, ref)
	}
	if action != "" {
		if !actions[action] {
			return errorf(CodeNotFound, "no image action %q; the actions are release, block, unblock and rescan, and GET sbom", action)
		}
		if !strings.Contains(refText, "@") {
			return errorf(CodeInvalid, "%s needs the image's digest, not a tag: POST %simages/<repository>@<digest>/%s",
				action, Prefix, action)
		}
		if err := allow(r, http.MethodPost); err != nil {
			return err
		}
		ref, err := ParseDigestReference(refText)
		if err != nil {
			return &apiError{Code: CodeInvalid, Message: err.Error()}
		}
		return s.change(w, r, actor, action, ref)
	}
	switch r.Method {
	case http.MethodGet:
		ref, err := ParseReference(refText)
		if err != nil {
			return &apiError{Code: CodeInvalid, Message: err.Error()}
		}
		return s.showImage(w, r, ref)
	case http.MethodDelete:
		ref, err := ParseDigestReference(refText)
		if err != nil {
			return &apiError{Code: CodeInvalid, Message: err.Error()}
		}
		return s.change(w, r, actor, "delete", ref)
	}
	return &apiError{Code: CodeMethodNotAllowed, Allow: "GET, DELETE",
		Message: "an image answers GET and DELETE; changes are POSTed to <image>/release, /block, /unblock or /rescan"}
}

func allow(r *http.Request, method string) error {
	if r.Method == method {
		return nil
	}
	return &apiError{Code: CodeMethodNotAllowed, Allow: method,
		Message: r.Method + " is not allowed on " + r.URL.Path + "; use " + method}
}
