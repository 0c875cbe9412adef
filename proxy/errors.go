package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/airlock-registry/airlock/proxy/upstream"
	"github.com/airlock-registry/airlock/verify"
)

// Code is an OCI distribution error code.
type Code string

// The codes airlock answers with: the distribution spec's, plus UNAVAILABLE
// for an upstream that cannot be reached (as distribution uses it).
const (
	CodeBlobUnknown      Code = "BLOB_UNKNOWN"
	CodeDigestInvalid    Code = "DIGEST_INVALID"
	CodeManifestInvalid  Code = "MANIFEST_INVALID"
	CodeManifestUnknown  Code = "MANIFEST_UNKNOWN"
	CodeNameInvalid      Code = "NAME_INVALID"
	CodeNameUnknown      Code = "NAME_UNKNOWN"
	CodeSizeInvalid      Code = "SIZE_INVALID"
	CodeUnauthorized     Code = "UNAUTHORIZED"
	CodeDenied           Code = "DENIED"
	CodeUnsupported      Code = "UNSUPPORTED"
	CodeTooManyRequests  Code = "TOOMANYREQUESTS"
	CodeUnavailable      Code = "UNAVAILABLE"
	CodeRangeUnsatisfied Code = "RANGE_INVALID"
	CodeNotFound         Code = "NOT_FOUND"
)

// Error is an error with its HTTP status and OCI code, written by writeError.
type Error struct {
	Status  int
	Code    Code
	Message string
	// RetryAfter, when set, becomes the Retry-After header.
	RetryAfter time.Duration
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

type ociErrors struct {
	Errors []ociError `json:"errors"`
}

type ociError struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// toError classifies any error into an OCI error. Errors from the upstream
// client and the verifier are mapped by their sentinel class; anything else
// is an internal error whose text is kept for the log, not for the client.
func toError(err error, notFound Code) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: notFound, Message: err.Error()}
	case errors.Is(err, upstream.ErrDenied):
		return &Error{Status: http.StatusBadGateway, Code: CodeDenied,
			Message: err.Error() + " (the upstream refused airlock's credentials: check the upstream's auth settings)"}
	case errors.Is(err, upstream.ErrRateLimited):
		ra, _ := upstream.RetryAfter(err)
		if ra <= 0 {
			ra = 10 * time.Second
		}
		return &Error{Status: http.StatusTooManyRequests, Code: CodeTooManyRequests, Message: err.Error(), RetryAfter: ra}
	case errors.Is(err, verify.ErrDigestMismatch):
		return &Error{Status: http.StatusBadGateway, Code: CodeDigestInvalid,
			Message: err.Error() + " (the upstream's content does not match its digest; nothing was cached)"}
	case errors.Is(err, verify.ErrTooLarge):
		return &Error{Status: http.StatusBadGateway, Code: CodeSizeInvalid, Message: err.Error()}
	case errors.Is(err, upstream.ErrUnavailable), errors.Is(err, upstream.ErrInvalid):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: err.Error()}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: err.Error()}
	}
	return &Error{Status: http.StatusInternalServerError, Code: CodeUnavailable, Message: "internal error; see the airlock log"}
}

// writeError is the one place errors become responses.
func writeError(w http.ResponseWriter, r *http.Request, e *Error) {
	h := w.Header()
	h.Del("Content-Length")
	h.Del("Docker-Content-Digest")
	h.Set("Content-Type", "application/json")
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	if e.Status == http.StatusMethodNotAllowed {
		h.Set("Allow", "GET, HEAD")
	}
	body, _ := json.Marshal(ociErrors{Errors: []ociError{{Code: e.Code, Message: e.Message}}})
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
