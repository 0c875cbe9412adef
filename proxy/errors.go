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
	"github.com/airlock-registry/airlock/storage"
	"github.com/airlock-registry/airlock/storage/metadata"
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
	// Err is the cause, for the log line only: clients read Message.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

type ociErrors struct {
	Errors []ociError `json:"errors"`
}

type ociError struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// toError classifies any error into an OCI error. Errors from the upstream
// client and the verifier are mapped by their sentinel class. The message a
// client gets is short and fixed by that class (the upstream's
// [upstream.Error.Public] where there is one): causes such as dial errors
// with internal addresses or the path of a credentials file, and advice
// meant for the operator, stay in the log line, which has err in full.
func toError(err error, notFound Code) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	public := func(fallback string) string { return publicMessage(err, fallback) }
	switch {
	case errors.Is(err, upstream.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: notFound, Message: public("not found upstream")}
	case errors.Is(err, upstream.ErrDenied):
		return &Error{Status: http.StatusBadGateway, Code: CodeDenied, Message: public("the upstream denied airlock access")}
	case errors.Is(err, upstream.ErrRateLimited):
		ra, _ := upstream.RetryAfter(err)
		if ra <= 0 {
			ra = 10 * time.Second
		}
		return &Error{Status: http.StatusTooManyRequests, Code: CodeTooManyRequests, Message: public("the upstream is rate limiting airlock; retry later"), RetryAfter: ra}
	case errors.Is(err, verify.ErrDigestMismatch):
		return &Error{Status: http.StatusBadGateway, Code: CodeDigestInvalid,
			Message: "the upstream's content does not match its digest; nothing was cached"}
	case errors.Is(err, verify.ErrTooLarge):
		return &Error{Status: http.StatusBadGateway, Code: CodeSizeInvalid,
			Message: "the upstream's content is larger than announced or allowed; nothing was cached"}
	case errors.Is(err, upstream.ErrInvalid):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: public("the upstream sent an invalid response")}
	case errors.Is(err, upstream.ErrUnavailable):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: public("the upstream is unavailable")}
	case errors.Is(err, storage.ErrUnavailable):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, RetryAfter: 5 * time.Second,
			Message: "airlock's blob store is unavailable; retry shortly"}
	case errors.Is(err, metadata.ErrUnavailable):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, RetryAfter: 5 * time.Second,
			Message: "airlock's metadata store is unavailable; retry shortly"}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "the upstream did not answer in time"}
	}
	return &Error{Status: http.StatusInternalServerError, Code: CodeUnavailable, Message: "internal error; see the airlock log"}
}

// publicMessage is what a client may read about err: the upstream error's
// Public text when err holds one, else fallback.
func publicMessage(err error, fallback string) string {
	if ue, ok := errors.AsType[*upstream.Error](err); ok {
		return ue.Public()
	}
	return fallback
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
