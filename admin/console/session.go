package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/airlock-registry/airlock/admin"
)

// Cookie names. The session cookie holds a random id, nothing else.
const (
	sessionCookie = "airlock_console"
	loginCookie   = "airlock_console_login"
)

// Session bounds.
const (
	defaultLifetime = 8 * time.Hour
	defaultIdle     = time.Hour
	// maxSessions bounds memory: sign-ins beyond it push out the session
	// used least recently.
	maxSessions = 1000
	// loginTTL is how long a sign-in form may be posted after it was
	// served.
	loginTTL = time.Hour
	// maxForm bounds a form body: a reason is a sentence.
	maxForm = 64 << 10
	// formTimeout bounds the time a form body may take to arrive, so a
	// client that stops sending half-way (anyone may post the sign-in
	// form) does not hold its request open for ever.
	formTimeout = 30 * time.Second
)

// session is one signed-in browser. It holds the token's credential (its
// hash and actor), never the token.
type session struct {
	cred    admin.Credential
	csrf    string
	created time.Time
	expires time.Time

	// Guarded by sessions.mu.
	lastSeen time.Time
	flash    *flash
}

// flash is a one-time message shown on the next page: a change's result.
type flash struct {
	OK   bool
	Text string
}

// sessions are kept in memory, keyed by the SHA-256 of the cookie's id so
// that the map's lookup timing says nothing about the ids it holds.
type sessions struct {
	lifetime, idle time.Duration

	mu   sync.Mutex
	byID map[[sha256.Size]byte]*session
}

func newSessions(lifetime, idle time.Duration) *sessions {
	if lifetime <= 0 {
		lifetime = defaultLifetime
	}
	if idle <= 0 {
		idle = defaultIdle
	}
	return &sessions{lifetime: lifetime, idle: idle, byID: map[[sha256.Size]byte]*session{}}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session for cred and returns its id.
func (s *sessions) create(cred admin.Credential, now time.Time) (string, *session) {
	id := randomToken()
	sess := &session{cred: cred, csrf: randomToken(), created: now, expires: now.Add(s.lifetime), lastSeen: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked(now)
	if len(s.byID) >= maxSessions {
		var oldest [sha256.Size]byte
		var at time.Time
		for k, v := range s.byID {
			if at.IsZero() || v.lastSeen.Before(at) {
				oldest, at = k, v.lastSeen
			}
		}
		delete(s.byID, oldest)
	}
	s.byID[sha256.Sum256([]byte(id))] = sess
	return id, sess
}

// lookup returns the live session of id, refreshing its idle clock.
func (s *sessions) lookup(id string, now time.Time) *session {
	key := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.byID[key]
	if sess == nil {
		return nil
	}
	if !now.Before(sess.expires) || now.Sub(sess.lastSeen) >= s.idle {
		delete(s.byID, key)
		return nil
	}
	sess.lastSeen = now
	return sess
}

func (s *sessions) end(id string) {
	s.mu.Lock()
	delete(s.byID, sha256.Sum256([]byte(id)))
	s.mu.Unlock()
}

func (s *sessions) pruneLocked(now time.Time) {
	for k, v := range s.byID {
		if !now.Before(v.expires) || now.Sub(v.lastSeen) >= s.idle {
			delete(s.byID, k)
		}
	}
}

func (s *sessions) setFlash(sess *session, f flash) {
	s.mu.Lock()
	sess.flash = &f
	s.mu.Unlock()
}

func (s *sessions) takeFlash(sess *session) *flash {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := sess.flash
	sess.flash = nil
	return f
}

// setCookie writes a cookie only the console's pages send back: HttpOnly,
// SameSite=Strict, Secure over TLS. It lives for maxAge; an empty value
// deletes it.
func setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge time.Duration) {
	c := &http.Cookie{Name: name, Value: value, Path: Prefix, HttpOnly: true, Secure: overTLS(r),
		SameSite: http.SameSiteStrictMode, MaxAge: -1}
	if value != "" {
		c.MaxAge = max(1, int(maxAge.Seconds()))
	}
	http.SetCookie(w, c)
}

// overTLS reports whether the browser reached the console over TLS: its
// own connection, or a reverse proxy's that ends TLS and says so. The
// header is trusted as far as it goes: all it can do is make a cookie
// Secure, which costs a client lying about it only its own sign-in.
func overTLS(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(strings.TrimSpace(r.Header.Get("X-Forwarded-Proto")), "https")
}

// session returns the request's live session. Without one, a GET is sent
// to the sign-in page (and back afterwards); anything else is refused.
func (c *Console) session(w http.ResponseWriter, r *http.Request) (*session, bool) {
	now := c.now()
	var sess *session
	var id string
	if ck, err := r.Cookie(sessionCookie); err == nil {
		id = ck.Value
		sess = c.sessions.lookup(id, now)
	}
	if sess != nil {
		// A token removed from the file (or renamed) ends its sessions.
		if err := c.tokens.Recheck(sess.cred); err != nil {
			c.log.LogAttrs(r.Context(), slog.LevelInfo, "console session ended: its token is no longer accepted",
				slog.String("actor", sess.cred.Actor))
			c.sessions.end(id)
			sess = nil
		}
	}
	if sess != nil {
		return sess, true
	}
	if id != "" {
		setCookie(w, r, sessionCookie, "", 0)
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		http.Redirect(w, r, Prefix+"login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return nil, false
	}
	c.render(w, r, http.StatusForbidden, "error", nil, errorData{Status: http.StatusForbidden, Title: "Signed out",
		Message: "Your session has ended or you are not signed in; nothing was changed. Sign in and try again."})
	return nil, false
}

// checkCSRF reports whether the form's csrf field is the session's.
func checkCSRF(r *http.Request, want string) bool {
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// parseForm reads a form body, bounded in size and time.
func (c *Console) parseForm(w http.ResponseWriter, r *http.Request) error {
	// Not every ResponseWriter can set a deadline (a test's recorder);
	// the size bound still holds. The deadline is lifted once the form is
	// read: left in place, it would cancel the request's context (net/http
	// watches the idle connection) during a slow change. It stays when
	// the form could not be read, since net/http then reads what is left
	// of the body before answering.
	rc := http.NewResponseController(w)
	deadline := rc.SetReadDeadline(time.Now().Add(c.formTimeout)) == nil
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	err := r.ParseForm()
	if deadline && err == nil {
		_ = rc.SetReadDeadline(time.Time{})
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errorPage(http.StatusBadRequest, "The form did not arrive within %v; send it again.", c.formTimeout)
	}
	if err != nil {
		return errorPage(http.StatusBadRequest, "The form could not be read: %v.", err)
	}
	return nil
}

type loginData struct {
	CSRF    string
	Next    string
	Message string
}

// login serves the sign-in form and signs in. The form's CSRF token is
// bound to a short-lived cookie (double submit), since there is no
// session yet to bind it to.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		c.loginForm(w, r, http.StatusOK, safeNext(r.URL.Query().Get("next")), "")
	case http.MethodPost:
		// Anyone may post this form: its body is bounded before anything
		// reads it (r.FormValue would read up to 10 MB, or spool a
		// multipart body to disk).
		if err := c.parseForm(w, r); err != nil {
			c.fail(w, r, nil, err)
			return
		}
		next := safeNext(r.PostFormValue("next"))
		ck, err := r.Cookie(loginCookie)
		if err != nil || !checkCSRFValue(r.PostFormValue("csrf"), ck.Value) {
			// Anyone can post the form without its cookie, as often as
			// they like, and no token was tried: no throttle counts it.
			c.logHeldBack(r, "sign-in csrf", "", "console sign-in refused: CSRF token missing or wrong",
				slog.String("remote", r.RemoteAddr))
			c.loginForm(w, r, http.StatusForbidden, next, "The sign-in form expired or did not come from this page. Try again.")
			return
		}
		var cred admin.Credential
		wait, terr := c.throttle.Check(r.Context(), r.RemoteAddr, func() bool {
			cred, err = c.tokens.Check(r.PostFormValue("token"))
			status, _ := admin.Describe(err)
			// A wrong token; not a token file unset, empty or unreadable,
			// which refuses every token and is no guess.
			return err != nil && status == http.StatusUnauthorized && !admin.TokensUnusable(err)
		})
		if errors.Is(terr, admin.ErrThrottled) {
			// Logged once by the throttle as it began refusing: a line
			// per refused guess would let a guesser fill the log.
			c.log.LogAttrs(r.Context(), slog.LevelDebug, "console sign-in refused: too many failed attempts",
				slog.String("remote", r.RemoteAddr))
			w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
			c.loginForm(w, r, http.StatusTooManyRequests, next,
				"Too many failed sign-ins from your address; wait a minute and try again.")
			return
		}
		if terr != nil {
			return // the browser went away while its attempt waited
		}
		if err != nil {
			status, msg := admin.Describe(err)
			attrs := []slog.Attr{slog.String("remote", r.RemoteAddr), slog.String("error", err.Error())}
			if admin.TokensUnusable(err) {
				c.logHeldBack(r, "sign-in tokens", err.Error(), "console sign-in refused", attrs...)
			} else {
				c.log.LogAttrs(r.Context(), slog.LevelWarn, "console sign-in refused", attrs...)
			}
			c.loginForm(w, r, status, next, msg)
			return
		}
		// The session this browser held, if any, ends: a sign-in never
		// leaves a replaced id alive (it may have leaked, or be the
		// previous user's on a shared browser).
		if old, err := r.Cookie(sessionCookie); err == nil {
			c.sessions.end(old.Value)
		}
		id, sess := c.sessions.create(cred, c.now())
		setCookie(w, r, sessionCookie, id, sess.expires.Sub(sess.created))
		setCookie(w, r, loginCookie, "", 0)
		c.log.LogAttrs(r.Context(), slog.LevelInfo, "console sign-in", slog.String("actor", cred.Actor),
			slog.String("remote", r.RemoteAddr))
		http.Redirect(w, r, next, http.StatusSeeOther)
	default:
		c.methodNotAllowed(w, r, nil, "GET, POST")
	}
}

func (c *Console) loginForm(w http.ResponseWriter, r *http.Request, status int, next, msg string) {
	token := randomToken()
	setCookie(w, r, loginCookie, token, loginTTL)
	c.render(w, r, status, "login", nil, loginData{CSRF: token, Next: next, Message: msg})
}

func checkCSRFValue(got, want string) bool {
	return got != "" && want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// safeNext keeps a post-sign-in redirect inside the console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") ||
		strings.HasPrefix(next, Prefix+"login") || strings.HasPrefix(next, Prefix+"logout") {
		return Prefix
	}
	return next
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, v *view) {
	if r.Method != http.MethodPost {
		c.methodNotAllowed(w, r, v, "POST")
		return
	}
	if err := c.parseForm(w, r); err != nil {
		c.fail(w, r, v, err)
		return
	}
	if !checkCSRF(r, v.sess.csrf) {
		c.fail(w, r, v, errCSRF)
		return
	}
	if ck, err := r.Cookie(sessionCookie); err == nil {
		c.sessions.end(ck.Value)
	}
	setCookie(w, r, sessionCookie, "", 0)
	c.log.LogAttrs(r.Context(), slog.LevelInfo, "console sign-out", slog.String("actor", v.sess.cred.Actor))
	http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
}

var errCSRF = errorPage(http.StatusForbidden,
	"This form did not carry this session's CSRF token, so nothing was changed. Reload the page and try again.")

// logHeldBack logs msg at warning level if no line of kind saying what
// was logged in the last minute (saying how many were held back since),
// else at debug level.
func (c *Console) logHeldBack(r *http.Request, kind, what, msg string, attrs ...slog.Attr) {
	ok, held := c.logs.Allow(kind, what)
	if !ok {
		c.log.LogAttrs(r.Context(), slog.LevelDebug, msg, attrs...)
		return
	}
	if held > 0 {
		attrs = append(attrs, slog.Int("held_back", held))
	}
	c.log.LogAttrs(r.Context(), slog.LevelWarn, msg, attrs...)
}
