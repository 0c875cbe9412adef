package admin

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
)

// maxTokenFile bounds the token file: it holds a few lines, and reading an
// unbounded file on every change would let a mistake (pointing it at a log)
// cost every request.
const maxTokenFile = 1 << 20

// tokenNameRE is what a token's name may be: it ends up in the audit log as
// "admin:<name>", so it is one plain word.
var tokenNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)

// tokenEntry is one accepted token: only its hash is kept, so that
// comparisons are over equal lengths and the token itself is never held
// longer than the parse.
type tokenEntry struct {
	sum   [sha256.Size]byte
	actor string
}

// tokenFile is admin.tokenFile, re-read when it changes. A stat per request
// is the price of rotation without restarts; it is a fraction of the
// request's own cost.
type tokenFile struct {
	path string

	mu      sync.Mutex
	info    fs.FileInfo // of the version parsed, nil before the first read
	entries []tokenEntry
}

// tokenFileError is a token file that cannot be used: unreadable or
// malformed. Requests then fail with 503 rather than 401, since no token
// would help. Public is what an unauthenticated client may read (the
// problem, not the path or the OS's words); the log gets Error().
type tokenFileError struct {
	path   string
	public string
	err    error
}

func (e *tokenFileError) Error() string {
	return fmt.Sprintf("admin.tokenFile %s: %v", e.path, e.err)
}

func (e *tokenFileError) Unwrap() error { return e.err }

// current returns the tokens the file holds now, re-reading it if its
// identity, size or modification time changed.
func (t *tokenFile) current() ([]tokenEntry, error) {
	info, err := os.Stat(t.path)
	if err != nil {
		return nil, &tokenFileError{path: t.path, public: "it cannot be read", err: err}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.info != nil && sameVersion(t.info, info) {
		return t.entries, nil
	}
	entries, err := readTokenFile(t.path)
	if err != nil {
		// Keep nothing from an older version: the file was changed on
		// purpose, perhaps to revoke a token.
		t.info, t.entries = nil, nil
		return nil, err
	}
	t.info, t.entries = info, entries
	return entries, nil
}

// sameVersion reports whether a and b are the same file unchanged. A
// Kubernetes Secret update swaps a symlink, which os.Stat follows, so a
// rotation shows up as another file.
func sameVersion(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

func readTokenFile(path string) ([]tokenEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &tokenFileError{path: path, public: "it cannot be read", err: err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return nil, &tokenFileError{path: path, public: "it cannot be read", err: err}
	}
	if len(data) > maxTokenFile {
		err := fmt.Errorf("larger than %d bytes; it should hold one token per line", maxTokenFile)
		return nil, &tokenFileError{path: path, public: "it is " + err.Error(), err: err}
	}
	entries, err := parseTokens(data)
	if err != nil {
		return nil, &tokenFileError{path: path, public: err.Error(), err: err}
	}
	return entries, nil
}

// parseTokens parses "token" and "name:token" lines; blank lines and lines
// starting with # are skipped. Errors name the line, never its content.
func parseTokens(data []byte) ([]tokenEntry, error) {
	var entries []tokenEntry
	seen := map[[sha256.Size]byte]int{}
	names := map[string]int{}
	// A Windows editor starts the file with a byte order mark: no part of
	// the first name or token.
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxTokenFile)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, token, named := strings.Cut(text, ":")
		if !named {
			name, token = "", text
		}
		name, token = strings.TrimSpace(name), strings.TrimSpace(token)
		switch {
		case named && !tokenNameRE.MatchString(name):
			return nil, fmt.Errorf("line %d: the name before ':' must be a word of letters, digits and . _ @ + - (at most 64)", line)
		case token == "":
			return nil, fmt.Errorf("line %d: no token after the name", line)
		case strings.ContainsAny(token, " \t"):
			return nil, fmt.Errorf("line %d: a token cannot contain spaces; write \"token\" or \"name:token\"", line)
		}
		e := tokenEntry{sum: sha256.Sum256([]byte(token))}
		if named {
			e.actor = "admin:" + name
			if prev, dup := names[name]; dup {
				return nil, fmt.Errorf("line %d: the name %q is already used on line %d; give each token its own name", line, name, prev)
			}
			names[name] = line
		} else {
			e.actor = "admin:token-" + hex.EncodeToString(e.sum[:4])
		}
		if prev, dup := seen[e.sum]; dup {
			return nil, fmt.Errorf("line %d: the same token is on line %d; each token must identify one actor", line, prev)
		}
		seen[e.sum] = line
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return entries, nil
}

// match returns the actor of token among entries. Every entry is compared,
// in constant time, so the answer's timing says nothing about which entry
// came close.
func match(entries []tokenEntry, token string) (string, bool) {
	sum := sha256.Sum256([]byte(token))
	actor, found := "", 0
	for i := range entries {
		eq := subtle.ConstantTimeCompare(sum[:], entries[i].sum[:])
		if eq == 1 {
			actor = entries[i].actor
		}
		found |= eq
	}
	return actor, found == 1
}

// bearer extracts the token of an "Authorization: Bearer <token>" header.
func bearer(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// Tokens checks tokens against admin.tokenFile, re-reading the file when
// it changes. The API and the console both sign in with it, so a token
// works (or is revoked) in both at once. It is safe for concurrent use.
type Tokens struct {
	file *tokenFile // nil when admin.tokenFile is not set
}

// NewTokens returns the Tokens of the file at path. An empty path means
// admin.tokenFile is not set: every token is refused with a message saying
// so. The file is not read until a token is checked.
func NewTokens(path string) *Tokens {
	if path == "" {
		return &Tokens{}
	}
	return &Tokens{file: &tokenFile{path: path}}
}

// Credential is a token that was checked: the actor it names and the
// token's hash, enough to ask later whether the file still holds it
// ([Tokens.Recheck]), never enough to sign in with.
type Credential struct {
	// Actor is what the audit log records: "admin:<name>", or
	// "admin:token-<hash>" for an unnamed token.
	Actor string
	sum   [sha256.Size]byte
}

// Check returns the credential of token. Its error is an API error:
// [Describe] gives its status (401, or 503 when the file cannot be used)
// and the sentence to show, which never contains a token or the file's
// content.
func (t *Tokens) Check(token string) (Credential, error) {
	entries, err := t.entries()
	if err != nil {
		return Credential{}, err
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return Credential{}, errorf(CodeUnauthorized, "authentication required: give a token from admin.tokenFile")
	}
	actor, ok := match(entries, token)
	if !ok {
		return Credential{}, errorf(CodeUnauthorized, "the token is not one of admin.tokenFile's tokens")
	}
	return Credential{Actor: actor, sum: sha256.Sum256([]byte(token))}, nil
}

// Recheck reports, as Check does, whether the token behind c is still in
// the file under the same actor: a session signed in with a token ends
// when the token is removed or renamed.
func (t *Tokens) Recheck(c Credential) error {
	entries, err := t.entries()
	if err != nil {
		return err
	}
	found := 0
	for i := range entries {
		eq := subtle.ConstantTimeCompare(c.sum[:], entries[i].sum[:])
		if eq == 1 && entries[i].actor != c.Actor {
			eq = 0
		}
		found |= eq
	}
	if found != 1 {
		return errorf(CodeUnauthorized, "the token this session signed in with is no longer in admin.tokenFile; sign in again")
	}
	return nil
}

// entries returns the tokens of the file now, or the API error saying why
// none can be accepted.
func (t *Tokens) entries() ([]tokenEntry, error) {
	if t.file == nil {
		e := errorf(CodeUnauthorized, "the admin API is disabled: admin.tokenFile is not set in airlock's configuration; "+
			"set it to a file of tokens (\"name:token\" per line) and restart")
		e.Err = errTokensUnusable
		return nil, e
	}
	entries, err := t.file.current()
	if err != nil {
		public := "it cannot be used"
		if te, ok := errors.AsType[*tokenFileError](err); ok {
			public = te.public
		}
		return nil, &apiError{Code: CodeUnavailable, Err: fmt.Errorf("%w: %w", errTokensUnusable, err),
			Message: "admin.tokenFile cannot be used: " + public + "; the airlock log has the details. Nothing was changed."}
	}
	if len(entries) == 0 {
		e := errorf(CodeUnauthorized, "admin.tokenFile holds no tokens; add a line \"name:token\" to it")
		e.Err = errTokensUnusable
		return nil, e
	}
	return entries, nil
}

// errTokensUnusable marks the refusals that come from airlock's own
// configuration, not from the token a client sent: no token file, an
// empty one, one that cannot be read. No throttle counts them, since they
// are no guesses.
var errTokensUnusable = errors.New("no token can be accepted")

// TokensUnusable reports whether err refused a request because no token
// can be accepted now (admin.tokenFile unset, empty or unusable), whatever
// the request sent. Anyone can cause such refusals, as often as they like:
// log them through a [LogEvery].
func TokensUnusable(err error) bool { return errors.Is(err, errTokensUnusable) }

// errGone marks a request that ended while its check waited for others
// from its address: nobody is left to answer, and anyone can send them.
var errGone = errors.New("request ended before its token was checked")

// errNoToken marks a request that sent no bearer token: no guess, and
// logged at debug level only, since anyone can send them by the million.
var errNoToken = errors.New("no bearer token")

// authenticate returns the actor a request's Authorization header names.
// A wrong token counts against the client's limit (see [Throttle]); a
// missing one does not, being no guess.
func (s *Server) authenticate(r *http.Request) (string, error) {
	if _, err := s.tokens.entries(); err != nil {
		return "", err
	}
	token, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		return "", &apiError{Code: CodeUnauthorized, Err: errNoToken,
			Message: "authentication required: send \"Authorization: Bearer <token>\" with a token from admin.tokenFile"}
	}
	var (
		c        Credential
		checkErr error
	)
	wait, err := s.throttle.Check(r.Context(), r.RemoteAddr, func() bool {
		c, checkErr = s.tokens.Check(token)
		e, ok := asAPIError(checkErr)
		// A token file emptied since the look above refuses every token:
		// no guess.
		return ok && e.Code == CodeUnauthorized && !TokensUnusable(checkErr)
	})
	switch {
	case errors.Is(err, ErrThrottled):
		secs := int(wait.Seconds()) + 1
		return "", &apiError{Code: CodeTooManyRequests, RetryAfter: secs, Err: err,
			Message: fmt.Sprintf("too many wrong tokens from your address; try again in %d s", secs)}
	case err != nil:
		return "", &apiError{Code: CodeUnavailable, Err: fmt.Errorf("%w: %w", errGone, err), Message: "the request ended before its token was checked"}
	case checkErr != nil:
		if e, ok := asAPIError(checkErr); ok && e.Code == CodeUnauthorized {
			return "", errorf(CodeUnauthorized, "the bearer token is not one of admin.tokenFile's tokens")
		}
		return "", checkErr
	}
	return c.Actor, nil
}
