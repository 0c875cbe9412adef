package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Code classifies an API error. Each code has one HTTP status (see
// [Code.Status]); clients branch on the code, people read the message.
type Code string

// The codes the API answers with.
const (
	CodeInvalid          Code = "INVALID"
	CodeUnauthorized     Code = "UNAUTHORIZED"
	CodeNotFound         Code = "NOT_FOUND"
	CodeMethodNotAllowed Code = "METHOD_NOT_ALLOWED"
	CodeConflict         Code = "CONFLICT"
	CodeTooLarge         Code = "TOO_LARGE"
	CodeTooManyRequests  Code = "TOO_MANY_REQUESTS"
	CodeInternal         Code = "INTERNAL"
	CodeUnavailable      Code = "UNAVAILABLE"
)

// Status is the HTTP status of an error with code c.
func (c Code) Status() int {
	switch c {
	case CodeInvalid:
		return http.StatusBadRequest
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeNotFound:
		return http.StatusNotFound
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeConflict:
		return http.StatusConflict
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeTooManyRequests:
		return http.StatusTooManyRequests
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// apiError is an error a handler returns; ServeHTTP writes it once.
type apiError struct {
	Code    Code
	Message string
	// Allow lists the methods a 405 names.
	Allow string
	// RetryAfter, in seconds, tells a client of a 503 or 429 when to try
	// again.
	RetryAfter int
	// Err is the cause, for the log only: clients read Message.
	Err error
}

func (e *apiError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *apiError) Unwrap() error { return e.Err }

func errorf(code Code, format string, args ...any) *apiError {
	return &apiError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// errorBody is the JSON of an error answer, the shape OCI registries use.
type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// writeError is the one place errors become responses.
func writeError(w http.ResponseWriter, e *apiError) {
	h := w.Header()
	if e.Code == CodeUnauthorized {
		h.Set("WWW-Authenticate", `Bearer realm="airlock-admin"`)
	}
	if e.Allow != "" {
		h.Set("Allow", e.Allow)
	}
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	writeJSON(w, e.Code.Status(), errorBody{Errors: []errorEntry{{Code: e.Code, Message: e.Message}}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Only our own types are written; a failure is a bug, and the
		// client still deserves JSON.
		status = http.StatusInternalServerError
		body = []byte(`{"errors":[{"code":"INTERNAL","message":"the answer could not be encoded; see the airlock log"}]}`)
	}
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// asAPIError returns err's apiError, if it is one.
func asAPIError(err error) (*apiError, bool) {
	return errors.AsType[*apiError](err)
}

// Describe returns the HTTP status and the sentence the API answers err
// with: an error of this package, or one of the gate's (storage.ErrNotFound
// 404, gate.ErrConflict 409, gate.ErrInvalid 400) or the scanner's
// (scanner.ErrUnavailable 503). The console shows the same sentences the
// CLI prints.
func Describe(err error) (status int, message string) {
	e := classify(err)
	return e.Code.Status(), e.Message
}

// RetryAfter is the Retry-After, in seconds, the API sends with err; 0
// when it sends none.
func RetryAfter(err error) int { return classify(err).RetryAfter }
