package pullauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Why a request was refused. The client learns only the first three
// apart; whether a user exists is for the log alone.
var (
	errNoCredentials = errors.New("no credentials")
	errMalformed     = errors.New("malformed Authorization header")
	errBusy          = errors.New("too many credential checks waiting")
	errUnknownUser   = errors.New("unknown user")
	errWrongPassword = errors.New("wrong password")
)

// maxAuthorization bounds the header parsed: Basic credentials of a
// 255-byte user and a 72-byte bcrypt password are far shorter.
const maxAuthorization = 4 << 10

// authenticate returns the user whose credentials r carries, or why not
// (with the user name, when there is one, for the log).
func (a *Authenticator) authenticate(ctx context.Context, st *state, r *http.Request) (string, error) {
	user, pass, err := basic(r.Header.Values("Authorization"))
	if err != nil {
		return user, err
	}
	return user, a.verify(ctx, st, user, pass)
}

// basic decodes Basic credentials. net/http's BasicAuth does the same but
// cannot tell a missing header from a malformed one, which the log should.
func basic(values []string) (user, pass string, err error) {
	switch {
	case len(values) == 0:
		return "", "", errNoCredentials
	case len(values) > 1:
		return "", "", errMalformed
	}
	v := values[0]
	if len(v) > maxAuthorization {
		return "", "", errMalformed
	}
	scheme, enc, _ := strings.Cut(strings.TrimSpace(v), " ")
	if !strings.EqualFold(scheme, "Basic") {
		return "", "", errMalformed
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc))
	if err != nil {
		return "", "", errMalformed
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	switch {
	case ok && user == "" && pass == "":
		// containers/image (skopeo, podman) sends this when it has no
		// credentials for the registry.
		return "", "", errNoCredentials
	case !ok || user == "":
		return "", "", errMalformed
	}
	return user, pass, nil
}

// verify checks user and pass against st, from the cache when it can.
// Concurrent checks of the same credentials share one comparison: the
// parallel layer downloads that start a pull arrive together.
func (a *Authenticator) verify(ctx context.Context, st *state, user, pass string) error {
	hash, known := st.users[user]
	k := a.cache.key(user, pass)
	if known && a.cache.ok(k, hash) {
		return nil
	}
	target := hash
	if !known {
		target = st.dummy
	}
	ch := a.flights.DoChan(string(k[:])+string(target), func() (any, error) {
		// Detached from the first client: the others wait on the result,
		// and the work is bounded by MaxWait plus one comparison.
		match, err := a.compareLimited(target, pass)
		if err == nil && match && known {
			a.cache.add(k, hash)
		}
		return match, err
	})
	select {
	case res := <-ch:
		switch {
		case res.Err != nil:
			return res.Err
		case !known:
			return errUnknownUser
		case !res.Val.(bool):
			return errWrongPassword
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// compareLimited runs one bcrypt comparison when a slot is free, waiting
// at most MaxWait, behind at most MaxWaiting others.
func (a *Authenticator) compareLimited(hash []byte, pass string) (bool, error) {
	if a.waiting.Add(1) > a.maxWaiting {
		a.waiting.Add(-1)
		return false, errBusy
	}
	t := time.NewTimer(a.maxWait)
	select {
	case a.slots <- struct{}{}:
		a.waiting.Add(-1)
		t.Stop()
	case <-t.C:
		a.waiting.Add(-1)
		return false, errBusy
	}
	defer func() { <-a.slots }()
	a.metrics.comparisons.Inc()
	return a.compare(hash, []byte(pass)) == nil, nil
}

// refuse answers a request that did not authenticate.
func (a *Authenticator) refuse(w http.ResponseWriter, r *http.Request, st *state, user string, err error) {
	attrs := []slog.Attr{slog.String("reason", err.Error()), slog.String("path", r.URL.Path),
		slog.String("remote", r.RemoteAddr)}
	if user != "" {
		attrs = append(attrs, slog.String("user", user))
	}
	switch {
	case errors.Is(err, errNoCredentials):
		// Every docker login and daemon ping starts like this.
		a.log.LogAttrs(r.Context(), slog.LevelDebug, "pull authentication required", attrs...)
		a.metrics.refusals.WithLabelValues(reasonNoCredentials).Inc()
		w.Header().Set("WWW-Authenticate", st.challenge)
		writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required: log in to this registry (docker login, or credentials for it in containerd, CRI or skopeo)")
	case errors.Is(err, errMalformed):
		a.log.LogAttrs(r.Context(), slog.LevelWarn, "pull authentication failed", attrs...)
		a.metrics.refusals.WithLabelValues(reasonMalformed).Inc()
		w.Header().Set("WWW-Authenticate", st.challenge)
		writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "malformed Authorization header: send HTTP Basic credentials")
	case errors.Is(err, errUnknownUser), errors.Is(err, errWrongPassword):
		a.log.LogAttrs(r.Context(), slog.LevelWarn, "pull authentication failed", attrs...)
		a.metrics.refusals.WithLabelValues(reasonInvalid).Inc()
		w.Header().Set("WWW-Authenticate", st.challenge)
		writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "invalid user name or password")
	case errors.Is(err, errBusy):
		a.log.LogAttrs(r.Context(), slog.LevelWarn, "pull authentication throttled", attrs...)
		a.metrics.refusals.WithLabelValues(reasonThrottled).Inc()
		w.Header().Set("Retry-After", "1")
		writeError(w, r, http.StatusTooManyRequests, "TOOMANYREQUESTS", "too many logins are being checked; retry shortly")
	default:
		// The client went away while its credentials waited.
		writeError(w, r, http.StatusServiceUnavailable, "UNAVAILABLE", "credentials could not be checked; retry")
	}
}

// writeError writes an OCI error body. The codes used here are those of the
// distribution spec, with the statuses the proxy gives them.
func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	type ociError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	body, _ := json.Marshal(struct {
		Errors []ociError `json:"errors"`
	}{[]ociError{{code, msg}}})
	h := w.Header()
	h.Set("Docker-Distribution-API-Version", "registry/2.0")
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
