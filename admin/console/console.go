package console

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/airlock-registry/airlock/admin"
	"github.com/airlock-registry/airlock/gate"
	"github.com/airlock-registry/airlock/storage/metadata"
)

// Prefix is the path the console is served under.
const Prefix = "/ui/"

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Manifests reads a cached manifest body; *metadata.DB implements it. The
// image page reads layer counts and sizes from it.
type Manifests interface {
	Manifest(ctx context.Context, d digest.Digest) (metadata.ManifestRecord, error)
}

// Options configure a [Console]. Store, Decider and TokenFile are what the
// admin API takes; the rest fill in panels and may be nil.
type Options struct {
	Store   admin.Store
	Decider admin.Decider
	// TokenFile is admin.tokenFile. Empty: nobody can sign in, and the
	// sign-in page says why.
	TokenFile string
	// Cache measures what the cache holds of an image.
	Cache admin.Cache
	// Manifests gives the image page its layers and sizes.
	Manifests Manifests
	// SBOMs, when set, lets the image page offer the SBOM of a scanned
	// image for download (the scanner; nil when scanning is off).
	SBOMs admin.SBOMs
	// Denials lists the latest refused pulls, newest first (the gate's
	// RecentDenials).
	Denials func(limit int) []gate.Denial
	// Stats reports the cache's size and hit ratio and each upstream's
	// health, from what the process already measures (see [StatsFrom]).
	Stats func(ctx context.Context) (Stats, error)
	// SessionLifetime ends a session this long after sign-in; 0 means 8h.
	SessionLifetime time.Duration
	// IdleTimeout ends a session not used for this long; 0 means 1h.
	IdleTimeout time.Duration
	// Logger receives a line per change, sign-in and refused request; nil
	// discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Throttle limits wrong tokens per client: give it the API's, so that
	// neither is a way around the other's limit. nil: one of its own.
	Throttle *admin.Throttle
}

// Console serves the pages under [Prefix]. Mount it with
// mux.Handle(console.Prefix, c).
type Console struct {
	store     admin.Store
	decider   admin.Decider
	tokens    *admin.Tokens
	cache     admin.Cache
	manifests Manifests
	sboms     admin.SBOMs
	denials   func(int) []gate.Denial
	stats     func(context.Context) (Stats, error)
	log       *slog.Logger
	now       func() time.Time

	sessions *sessions
	throttle *admin.Throttle
	// logs holds back the sign-in refusals that anyone can cause and no
	// throttle counts to a line a minute.
	logs        *admin.LogEvery
	formTimeout time.Duration
	// scans bounds the pages that read a whole table at once (images,
	// overview, audit): each holds up to maxScan decoded images or hashes
	// the whole audit chain, and a few open tabs must not multiply that.
	scans  chan struct{}
	pages  map[string]*template.Template
	static http.Handler
	// assets maps a static file's name to its URL with a content hash,
	// so browsers may keep it as long as the binary serves it.
	assets  map[string]string
	handler http.Handler
}

// New returns a Console. Like the API, it reads the token file on each
// sign-in and request, not now.
func New(o Options) (*Console, error) {
	if o.Store == nil || o.Decider == nil {
		return nil, errors.New("console: Options.Store and Options.Decider are required")
	}
	c := &Console{store: o.Store, decider: o.Decider, tokens: admin.NewTokens(o.TokenFile), cache: o.Cache,
		manifests: o.Manifests, sboms: o.SBOMs, denials: o.Denials, stats: o.Stats, log: o.Logger, now: o.Now,
		throttle: o.Throttle}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.throttle == nil {
		c.throttle = admin.NewThrottle(c.now, c.log)
	}
	c.logs = admin.NewLogEvery(admin.ThrottleWindow, c.now)
	c.sessions = newSessions(o.SessionLifetime, o.IdleTimeout)
	c.scans = make(chan struct{}, maxScans)
	c.formTimeout = formTimeout
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	if c.assets, err = assetURLs(static); err != nil {
		return nil, err
	}
	c.static = http.StripPrefix(Prefix+"static/", http.FileServerFS(static))
	if c.pages, err = parsePages(c.funcs()); err != nil {
		return nil, err
	}
	// Cross-origin POSTs are refused by the browser's own word (Sec-Fetch-
	// Site, Origin) before the CSRF token is even looked at.
	c.handler = http.NewCrossOriginProtection().Handler(http.HandlerFunc(c.route))
	return c, nil
}

// assetURLs fingerprints each static file.
func assetURLs(static fs.FS) (map[string]string, error) {
	urls := map[string]string{}
	err := fs.WalkDir(static, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(static, path)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		urls[path] = Prefix + "static/" + path + "?v=" + hex.EncodeToString(sum[:6])
		return nil
	})
	return urls, err
}

// pageNames are the templates with a page of their own; each is parsed
// with layout.html.
var pageNames = []string{"login", "overview", "images", "image", "confirm", "audit", "error"}

func parsePages(funcs template.FuncMap) (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// ServeHTTP serves the console.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// No inline script or style anywhere, nothing from another host, no
	// framing, and no Referer to advisory sites.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	c.handler.ServeHTTP(w, r)
}

// route dispatches on the path below Prefix. Static files and the sign-in
// page need no session; everything else does.
func (c *Console) route(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok {
		if r.URL.Path == strings.TrimSuffix(Prefix, "/") {
			http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
			return
		}
		c.notFound(w, r, nil)
		return
	}
	switch {
	case strings.HasPrefix(rest, "static/"):
		c.serveStatic(w, r)
		return
	case rest == "login":
		c.login(w, r)
		return
	}
	sess, ok := c.session(w, r)
	if !ok {
		return
	}
	v := &view{c: c, sess: sess, r: r}
	switch {
	case rest == "logout":
		c.logout(w, r, v)
	case rest == "":
		c.get(w, r, v, c.overview)
	case rest == "images":
		c.get(w, r, v, c.images)
	case strings.HasPrefix(rest, "images/"):
		c.imageRoute(w, r, v, strings.TrimPrefix(rest, "images/"))
	case rest == "audit":
		c.get(w, r, v, c.audit)
	default:
		c.notFound(w, r, v)
	}
}

func (c *Console) serveStatic(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		c.methodNotAllowed(w, r, nil, "GET")
		return
	}
	if r.URL.Query().Get("v") != "" {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	c.static.ServeHTTP(w, r)
}

// get runs a read-only page handler for GET and HEAD.
func (c *Console) get(w http.ResponseWriter, r *http.Request, v *view, page func(http.ResponseWriter, *http.Request, *view) error) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		c.methodNotAllowed(w, r, v, "GET")
		return
	}
	if err := page(w, r, v); err != nil {
		c.fail(w, r, v, err)
	}
}

// maxScans is how many whole-table pages are built at once; the others
// wait their turn.
const maxScans = 2

// scan waits for a turn to build a whole-table page. Call the function it
// returns (once or more) when the page's data are built, before writing
// it: a client slow to read must not keep the turn.
func (c *Console) scan(ctx context.Context) (func(), error) {
	select {
	case c.scans <- struct{}{}:
		return sync.OnceFunc(func() { <-c.scans }), nil
	case <-ctx.Done():
		return nil, errorPage(http.StatusServiceUnavailable, "The console is busy building other pages; try again.")
	}
}

// pageError is an error a page answers with: a status and a sentence for
// the person reading it.
type pageError struct {
	status  int
	message string
}

func (e *pageError) Error() string { return e.message }

func errorPage(status int, format string, args ...any) *pageError {
	return &pageError{status: status, message: fmt.Sprintf(format, args...)}
}

// fail renders err as an error page. Errors that are not page errors are
// classified as the API does, so the console says what the CLI would.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, v *view, err error) {
	status, msg := http.StatusInternalServerError, ""
	if pe, ok := errors.AsType[*pageError](err); ok {
		status, msg = pe.status, pe.message
	} else {
		status, msg = admin.Describe(err)
	}
	signedIn := v != nil && v.sess != nil
	level := slog.LevelInfo
	switch {
	case status >= 500:
		level = slog.LevelError
	case !signedIn:
		// A client's mistake before any sign-in (a sign-in form that
		// cannot be read): anyone can send them by the million.
		level = slog.LevelDebug
	}
	attrs := []slog.Attr{slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", status), slog.String("error", err.Error())}
	if signedIn {
		attrs = append(attrs, slog.String("actor", v.sess.cred.Actor))
	}
	c.log.LogAttrs(r.Context(), level, "console request failed", attrs...)
	if secs := admin.RetryAfter(err); secs > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	c.render(w, r, status, "error", v, errorData{Status: status, Title: http.StatusText(status), Message: msg})
}

type errorData struct {
	Status  int
	Title   string
	Message string
}

func (c *Console) notFound(w http.ResponseWriter, r *http.Request, v *view) {
	c.render(w, r, http.StatusNotFound, "error", v, errorData{Status: http.StatusNotFound, Title: "Not found",
		Message: "There is no console page at " + r.URL.Path + "."})
}

func (c *Console) methodNotAllowed(w http.ResponseWriter, r *http.Request, v *view, allow string) {
	w.Header().Set("Allow", allow)
	c.render(w, r, http.StatusMethodNotAllowed, "error", v, errorData{Status: http.StatusMethodNotAllowed,
		Title: "Method not allowed", Message: r.Method + " is not allowed here; use " + allow + "."})
}

// page is what layout.html renders around a page's own data.
type page struct {
	Title  string
	Nav    string // the nav entry to mark current
	View   *view
	Flash  *flash
	Assets map[string]string
	Data   any
}

// render writes a page. The body is rendered to a buffer first so that a
// template error becomes a clean 500, not half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, v *view, data any) {
	t := c.pages[name]
	p := page{Title: titleOf(name, data), Nav: name, View: v, Assets: c.assets, Data: data}
	if v != nil && v.sess != nil && status < 400 {
		p.Flash = c.sessions.takeFlash(v.sess)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, p); err != nil {
		c.log.LogAttrs(r.Context(), slog.LevelError, "console page failed to render",
			slog.String("page", name), slog.String("error", err.Error()))
		http.Error(w, "the page could not be rendered; see the airlock log", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = bidiControls.WriteString(w, buf.String())
	}
}

// bidiControls shows Unicode's bidirectional controls as visible marks.
// Tags, identities, messages and names come from upstreams and clients,
// and a right-to-left override in one reorders what a page shows (an
// identity that reads as another's); the templates themselves use none,
// so the whole page can be rewritten.
var bidiControls = func() *strings.Replacer {
	var pairs []string
	for _, r := range []rune{0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069} {
		pairs = append(pairs, string(r), fmt.Sprintf("[U+%04X]", r))
	}
	return strings.NewReplacer(pairs...)
}()

// titler is page data that names its page.
type titler interface{ title() string }

func titleOf(name string, data any) string {
	if t, ok := data.(titler); ok {
		return t.title()
	}
	switch name {
	case "login":
		return "Sign in"
	case "overview":
		return "Overview"
	case "images":
		return "Images"
	case "audit":
		return "Audit log"
	}
	if e, ok := data.(errorData); ok {
		return e.Title
	}
	return "airlock"
}
