package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"
)

// The classes of failure. Every error returned by this package wraps exactly
// one of them; test with errors.Is.
var (
	// ErrNotFound: the upstream does not have the repository, manifest or blob.
	ErrNotFound = errors.New("not found upstream")
	// ErrDenied: the upstream refused access even after authentication was
	// attempted, or credentials could not be obtained.
	ErrDenied = errors.New("denied by upstream")
	// ErrRateLimited: the upstream kept answering 429; see RetryAfter.
	ErrRateLimited = errors.New("rate limited by upstream")
	// ErrUnavailable: the upstream could not be reached, timed out, kept
	// failing with 5xx, or dropped a body that could not be resumed.
	ErrUnavailable = errors.New("upstream unavailable")
	// ErrReferrersUnsupported: the upstream does not implement the referrers
	// API; use the referrers tag schema instead.
	ErrReferrersUnsupported = errors.New("upstream does not support the referrers API")
	// ErrInvalid: the upstream's response was malformed or unexpected.
	ErrInvalid = errors.New("invalid response from upstream")
)

// Error is the error type returned by Registry methods. It unwraps to its
// Kind (one of the sentinels) and to the underlying cause, if any.
type Error struct {
	Kind     error  // one of the Err* sentinels
	Upstream string // configured upstream name
	Op       string // "manifest", "blob", "tags", "referrers", "token"
	Repo     string
	Ref      string // tag or digest, if the operation has one
	Status   int    // HTTP status, 0 if no response
	Code     string // OCI error code from the body ("MANIFEST_UNKNOWN"), if any
	Message  string // OCI error message from the body, or a description
	// RetryAfter is what the upstream asked for with Retry-After (0 if none).
	RetryAfter time.Duration
	Err        error // underlying cause (network error, parse error), if any

	// public marks Message as fit for clients (a bound airlock enforces,
	// say), so Public includes it.
	public bool
}

// Error describes the failure for the operator's log: everything known,
// the cause and what to do about it included.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "upstream %s: %s", e.Upstream, e.subject())
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
	}
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, " %q", e.Message)
	}
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	b.WriteString(": " + e.Kind.Error())
	if h := e.hint(); h != "" {
		b.WriteString(" (" + h + ")")
	}
	return b.String()
}

// subject names what was asked: "manifest library/app:1", "blob
// app@sha256:...", "tags app".
func (e *Error) subject() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Op == "token" && e.Repo != "" {
		b.WriteString(" for")
	}
	if e.Repo != "" {
		b.WriteString(" " + e.Repo)
		if e.Ref != "" {
			if strings.Contains(e.Ref, ":") {
				b.WriteString("@" + e.Ref)
			} else {
				b.WriteString(":" + e.Ref)
			}
		}
	}
	return b.String()
}

// Public describes the failure in words fit for airlock's clients: which
// upstream, what was asked, and the class of failure. It leaves out what
// only the operator may see or act on: the cause (a dial error naming
// internal addresses, the path of a credentials file), the upstream's own
// error text, and the advice of Error. The log line carries those.
func (e *Error) Public() string {
	up := "upstream " + e.Upstream
	var msg string
	switch e.Kind {
	case ErrNotFound:
		msg = fmt.Sprintf("%s has no %s", up, e.subject())
	case ErrDenied:
		if e.Status == 0 {
			// Nothing was refused by the upstream: airlock could not
			// present credentials (unreadable, missing, or not to be
			// sent over plain HTTP).
			msg = fmt.Sprintf("airlock could not authenticate to %s for %s", up, e.subject())
		} else {
			// Anonymous or not, the upstream said no; whether to
			// blame the credentials is for the log to tell.
			msg = fmt.Sprintf("%s denied airlock access to %s", up, e.subject())
		}
	case ErrRateLimited:
		msg = up + " is rate limiting airlock; retry later"
	case ErrReferrersUnsupported:
		msg = up + " does not support the referrers API"
	case ErrInvalid:
		msg = fmt.Sprintf("%s sent an invalid response to %s", up, e.subject())
	default:
		msg = up + " is unavailable"
	}
	if e.public && e.Message != "" {
		msg += ": " + e.Message
	}
	return msg
}

// hint says what an operator can do about the failure.
func (e *Error) hint() string {
	switch e.Kind {
	case ErrDenied:
		return "check the credentials configured for upstream " + e.Upstream + " and that they may pull this repository"
	case ErrRateLimited:
		if e.RetryAfter > 0 {
			return "retry after " + e.RetryAfter.String() + ", or configure credentials with a higher pull limit"
		}
		return "retry later, or configure credentials with a higher pull limit"
	case ErrUnavailable:
		return "retry later; cached content is still served"
	}
	return ""
}

// Unwrap lets errors.Is match both the class and the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// RetryAfter reports how long the upstream asked callers to wait, when err
// (or an error it wraps) carries a Retry-After from the upstream.
func RetryAfter(err error) (time.Duration, bool) {
	var e *Error
	if errors.As(err, &e) && e.RetryAfter > 0 {
		return e.RetryAfter, true
	}
	return 0, false
}

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// ociErrors is the distribution-spec error body.
type ociErrors struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// statusError classifies a non-success response, reading (a bounded part of)
// its body for the OCI error code. It does not close the body.
func statusError(resp *http.Response, c *call) *Error {
	e := c.errorf(classify(resp.StatusCode, ""), nil, "")
	e.Status = resp.StatusCode
	var body ociErrors
	if b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody)); err == nil && json.Unmarshal(b, &body) == nil && len(body.Errors) > 0 {
		// The upstream's words go into log lines: keep them to a line.
		e.Code = truncate(body.Errors[0].Code, 64)
		e.Message = truncate(body.Errors[0].Message, 512)
		e.Kind = classify(resp.StatusCode, e.Code)
	}
	if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
		e.RetryAfter = d
	}
	return e
}

// classify maps an HTTP status and OCI error code to a sentinel. The code
// wins where it is more specific than the status (some registries answer
// MANIFEST_UNKNOWN with 400, or DENIED with 404).
func classify(status int, code string) error {
	switch code {
	case "MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN":
		return ErrNotFound
	case "DENIED", "UNAUTHORIZED":
		return ErrDenied
	case "TOOMANYREQUESTS":
		return ErrRateLimited
	}
	switch {
	case status == http.StatusNotFound:
		return ErrNotFound
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return ErrDenied
	case status == http.StatusTooManyRequests:
		return ErrRateLimited
	case status >= 500 || status == http.StatusRequestTimeout:
		return ErrUnavailable
	}
	return ErrInvalid
}

// truncate shortens s to at most n bytes, on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
