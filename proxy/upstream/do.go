package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// maxRedirects bounds one round trip's redirect chain.
const maxRedirects = 10

const userAgent = "airlock"

// call describes one logical request: what to send, where, and how failures
// are reported. Every call is idempotent (GET or HEAD), which is what makes
// retrying it safe.
type call struct {
	upstream string
	op       string // Event and Error operation
	method   string
	url      string
	repo     string // repository, for errors and for the token scope
	ref      string // tag or digest, for errors
	header   http.Header
	// auth: authenticate against the registry (challenge, token, Basic).
	// False for token requests, which carry authz as given.
	auth  bool
	authz string
	// pass lists non-2xx statuses handed back as responses for the caller
	// to interpret (404 for referrers, for example).
	pass []int
}

func (c *call) errorf(kind, cause error, format string, args ...any) *Error {
	e := &Error{Kind: kind, Upstream: c.upstream, Op: c.op, Repo: c.repo, Ref: c.ref, Err: cause}
	if format != "" {
		e.Message = fmt.Sprintf(format, args...)
	}
	return e
}

// do sends c, authenticating and retrying as needed, and returns a response
// whose status is 2xx or listed in c.pass. The caller must close its body.
// Any other outcome is an *Error.
func (r *Registry) do(ctx context.Context, c *call) (*http.Response, error) {
	var scopes []string // extra token scopes demanded by a challenge
	authRetried := false
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, c.errorf(ErrUnavailable, context.Cause(ctx), "request abandoned")
		}
		authz := c.authz
		if c.auth {
			var err error
			if authz, err = r.auth.header(ctx, c, scopes); err != nil {
				return nil, err
			}
		}
		resp, err := r.attempt(ctx, c, authz)
		var failure *Error
		switch {
		case err != nil:
			if errors.As(err, &failure) {
				return nil, failure // permanent: redirect loop, bad Location
			}
			if ctx.Err() != nil {
				return nil, c.errorf(ErrUnavailable, context.Cause(ctx), "request abandoned")
			}
			failure = c.errorf(ErrUnavailable, err, "")
		case resp.StatusCode/100 == 2 || slices.Contains(c.pass, resp.StatusCode):
			return resp, nil
		case redirected(resp, c) && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden):
			// A redirect target (a CDN) refusing a signed URL is not the
			// registry's challenge: it must not change the realm or
			// receive credentials. The signature may have expired on
			// the way, so the whole request is worth another attempt.
			failure = statusError(resp, c)
			failure.Kind = ErrUnavailable
			failure.Message = "redirect target " + resp.Request.URL.Host + " refused the redirected request"
			discard(resp)
		case resp.StatusCode == http.StatusUnauthorized && c.auth && !authRetried:
			challenges := ParseChallenges(resp.Header.Values("WWW-Authenticate"))
			discard(resp)
			if scopes, err = r.auth.learn(c, challenges, authz); err != nil {
				return nil, err
			}
			// The authenticated retry is part of the same attempt.
			authRetried = true
			attempt--
			continue
		default:
			failure = statusError(resp, c)
			discard(resp)
			if !retryable(resp.StatusCode) {
				return nil, failure
			}
		}
		if attempt >= r.o.MaxAttempts {
			return nil, failure
		}
		delay := r.backoff(attempt)
		if failure.RetryAfter > 0 {
			if failure.RetryAfter > r.o.MaxDelay {
				// Waiting that long would hold the client; let the caller
				// decide (serve from cache, or pass the 429 on).
				return nil, failure
			}
			delay = failure.RetryAfter
		}
		r.o.Logger.LogAttrs(ctx, slog.LevelDebug, "retrying upstream request",
			slog.String("upstream", c.upstream), slog.String("op", c.op), slog.String("repo", c.repo),
			slog.Int("attempt", attempt), slog.Duration("delay", delay), slog.String("failure", failure.Error()))
		if err := sleep(ctx, delay); err != nil {
			return nil, c.errorf(ErrUnavailable, err, "request abandoned while waiting to retry")
		}
	}
}

// retryable reports whether a status is worth another attempt: server
// trouble and rate limiting, not answers about the content.
func retryable(status int) bool {
	switch status {
	case http.StatusTooManyRequests, http.StatusRequestTimeout:
		return true
	case http.StatusNotImplemented, http.StatusHTTPVersionNotSupported:
		return false
	}
	return status >= 500
}

// errHeaderTimeout and errStalled are the causes a request's context is
// cancelled with when a timeout fires, so the resulting error says which.
var (
	errHeaderTimeout = errors.New("no response headers in time")
	errStalled       = errors.New("body stalled")
)

// attempt performs one round trip (following redirects) under the header
// timeout, and arms the idle timeout on the body it returns.
func (r *Registry) attempt(ctx context.Context, c *call, authz string) (*http.Response, error) {
	actx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(r.o.HeaderTimeout, func() { cancel(errHeaderTimeout) })
	resp, err := r.follow(actx, c, authz)
	timer.Stop()
	if err != nil {
		if context.Cause(actx) == errHeaderTimeout {
			err = fmt.Errorf("no response headers within %s: %w", r.o.HeaderTimeout, err)
		}
		cancel(nil)
		return nil, err
	}
	resp.Body = newIdleBody(actx, cancel, resp.Body, r.o.IdleTimeout, c)
	return resp, nil
}

// follow sends c and follows redirects itself (rather than through
// http.Client) so that every hop is observed, the Authorization header is
// only ever sent to the origin it belongs to (a CDN that a blob is
// redirected to must not see registry credentials or tokens), and every hop
// off the upstream's origin goes through the hopGuard's transport.
func (r *Registry) follow(ctx context.Context, c *call, authz string) (*http.Response, error) {
	first, err := url.Parse(c.url)
	if err != nil {
		return nil, c.errorf(ErrInvalid, err, "bad request URL")
	}
	u := first
	for hop := 0; ; hop++ {
		req, err := http.NewRequestWithContext(ctx, c.method, u.String(), nil)
		if err != nil {
			return nil, c.errorf(ErrInvalid, err, "bad request URL")
		}
		for k, v := range c.header {
			req.Header[k] = slices.Clone(v)
		}
		req.Header.Set("User-Agent", userAgent)
		if authz != "" && sameOrigin(u, first) {
			req.Header.Set("Authorization", authz)
		}
		rt := r.o.Transport
		if !sameOrigin(u, r.base) {
			rt = r.hops
		}
		start := time.Now()
		resp, err := rt.RoundTrip(req)
		e := Event{Op: c.op, Err: err, Duration: time.Since(start)}
		if resp != nil {
			e.Status, e.Header = resp.StatusCode, resp.Header
		}
		r.observe(e)
		var refused *refusedError
		if errors.As(err, &refused) {
			return nil, c.errorf(ErrInvalid, refused, "upstream sent airlock to a forbidden address")
		}
		if err != nil {
			return nil, err
		}
		if resp.Request == nil {
			resp.Request = req // do() needs to know where the answer came from
		}
		if !isRedirect(resp.StatusCode) {
			return resp, nil
		}
		loc := resp.Header.Get("Location")
		discard(resp)
		if hop >= maxRedirects {
			return nil, c.errorf(ErrInvalid, nil, "more than %d redirects", maxRedirects)
		}
		next, err := u.Parse(loc)
		if err != nil || loc == "" || (next.Scheme != "http" && next.Scheme != "https") || next.Host == "" {
			return nil, c.errorf(ErrInvalid, err, "redirect with unusable Location")
		}
		u = next
	}
}

// redirected reports whether resp came from another origin than the one c
// was sent to: from a redirect target rather than the registry (or realm)
// itself.
func redirected(resp *http.Response, c *call) bool {
	first, err := url.Parse(c.url)
	return err != nil || !sameOrigin(resp.Request.URL, first)
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

func sameOrigin(a, b *url.URL) bool {
	return a.Scheme == b.Scheme && a.Host == b.Host
}

// discard drains a little of a body (so the connection can be reused) and
// closes it.
func discard(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
}

// observe reports one round trip to the Observe hook.
func (r *Registry) observe(e Event) {
	if r.o.Observe != nil {
		e.Upstream = r.o.Name
		r.o.Observe(e)
	}
}
