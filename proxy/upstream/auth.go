package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// authenticator holds what one upstream has taught us about authentication:
// the scheme it wants (learned from its first 401, then used pre-emptively)
// and the Bearer tokens it issued, keyed by realm, service and scope.
type authenticator struct {
	r *Registry

	mu      sync.Mutex
	scheme  string // "", "basic" or "bearer"
	realm   string
	service string
	tokens  map[string]cachedToken
	// maxTokens bounds tokens: there is one per repository asked for, and
	// the names asked for are the clients' choice.
	maxTokens int

	// flights makes concurrent requests that need the same token share one
	// token request: a burst of pulls of one image costs one round trip to
	// the realm, not one per layer.
	flights singleflight.Group
	now     func() time.Time
}

type cachedToken struct {
	value   string
	refresh time.Time // when to stop using it (its expiry minus a margin)
}

func newAuthenticator(r *Registry) *authenticator {
	return &authenticator{r: r, tokens: map[string]cachedToken{}, maxTokens: maxCachedTokens, now: time.Now}
}

// maxCachedTokens is how many tokens one upstream keeps. Docker Hub tokens
// are about 1.5 KiB and live 5 minutes, so this holds a few MiB and covers
// every repository pulled more than once in a token's lifetime by a busy
// gateway; a repository evicted early costs one token request.
const maxCachedTokens = 1024

// store caches tok under key. At the bound it first drops expired tokens,
// then, if none had expired, the one due for refresh soonest: it is the
// least valuable to keep. The caller holds a.mu.
func (a *authenticator) store(key string, tok cachedToken) {
	if _, ok := a.tokens[key]; !ok && len(a.tokens) >= a.maxTokens {
		now := a.now()
		soonest, first := "", time.Time{}
		for k, t := range a.tokens {
			if !now.Before(t.refresh) {
				delete(a.tokens, k)
				continue
			}
			if soonest == "" || t.refresh.Before(first) {
				soonest, first = k, t.refresh
			}
		}
		if len(a.tokens) >= a.maxTokens {
			delete(a.tokens, soonest)
		}
	}
	a.tokens[key] = tok
}

// header returns the Authorization value for a request of c, or "" while the
// upstream has not asked for authentication. extra holds scopes a challenge
// demanded beyond pull access to c.repo.
func (a *authenticator) header(ctx context.Context, c *call, extra []string) (string, error) {
	a.mu.Lock()
	scheme, realm, service := a.scheme, a.realm, a.service
	a.mu.Unlock()
	switch scheme {
	case "basic":
		user, pass, err := a.credentials(ctx, c)
		if err != nil {
			return "", err
		}
		if user == "" && pass == "" {
			return "", c.errorf(ErrDenied, nil, "upstream requires Basic authentication but no credentials are configured")
		}
		return basicAuth(user, pass), nil
	case "bearer":
		tok, err := a.bearer(ctx, c, realm, service, tokenScopes(c.repo, extra))
		if err != nil {
			return "", err
		}
		return "Bearer " + tok, nil
	}
	return "", nil
}

// learn records what a 401 asked for. sent is the Authorization value the
// rejected request carried; a token that was refused is dropped from the
// cache so the retry fetches a fresh one. It returns the extra scopes the
// challenge named.
func (a *authenticator) learn(c *call, challenges []Challenge, sent string) ([]string, error) {
	var chosen *Challenge
	for i := range challenges {
		ch := &challenges[i]
		if ch.Scheme == "bearer" && ch.Params["realm"] != "" {
			chosen = ch
			break
		}
		if ch.Scheme == "basic" && chosen == nil {
			chosen = ch
		}
	}
	if chosen == nil {
		return nil, c.errorf(ErrDenied, nil, "upstream answered 401 without a usable Bearer or Basic challenge")
	}
	if n := len(chosen.Params["realm"]) + len(chosen.Params["service"]) + len(chosen.Params["scope"]); n > maxChallenge {
		// They become the token cache's keys and the token request's URL.
		return nil, c.errorf(ErrInvalid, nil, "challenge's realm, service and scope take %d bytes, more than %d", n, maxChallenge)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.scheme = chosen.Scheme
	a.realm, a.service = chosen.Params["realm"], chosen.Params["service"]
	if tok, ok := strings.CutPrefix(sent, "Bearer "); ok {
		for k, t := range a.tokens {
			if t.value == tok {
				delete(a.tokens, k)
			}
		}
	}
	return strings.Fields(chosen.Params["scope"]), nil
}

// tokenScopes is pull access to repo plus any further scopes a challenge
// named, deduplicated and in a stable order so that equal needs share one
// cache entry.
func tokenScopes(repo string, extra []string) []string {
	scopes := []string{"repository:" + repo + ":pull"}
	for _, s := range extra {
		if !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	slices.Sort(scopes[1:])
	return scopes
}

// bearer returns a token for scopes, from the cache or from the realm.
func (a *authenticator) bearer(ctx context.Context, c *call, realm, service string, scopes []string) (string, error) {
	key := realm + "\x00" + service + "\x00" + strings.Join(scopes, " ")
	a.mu.Lock()
	t, ok := a.tokens[key]
	if ok && !a.now().Before(t.refresh) {
		delete(a.tokens, key)
		ok = false
	}
	a.mu.Unlock()
	if ok {
		return t.value, nil
	}
	// The fetch runs detached from this caller's context: other requests may
	// be waiting on the same flight, and one client hanging up must not fail
	// them. It is still bounded in time.
	ch := a.flights.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.tokenTimeout())
		defer cancel()
		tok, err := a.fetchToken(fctx, c, realm, service, scopes)
		if err != nil {
			return nil, err
		}
		a.mu.Lock()
		a.store(key, tok)
		a.mu.Unlock()
		return tok.value, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return "", res.Err
		}
		return res.Val.(string), nil
	case <-ctx.Done():
		return "", c.errorf(ErrUnavailable, context.Cause(ctx), "abandoned while waiting for a token")
	}
}

// tokenTimeout bounds one token fetch including its retries. The
// arithmetic saturates: retry settings whose product overflows would
// otherwise wrap to a deadline already past, and every token fetch would
// fail at once.
func (a *authenticator) tokenTimeout() time.Duration {
	o := a.r.o
	return satAdd(satMul(o.MaxAttempts, o.HeaderTimeout), satMul(o.MaxAttempts-1, o.MaxDelay))
}

// satMul is n*d, or the longest Duration when that overflows. n and d are
// not negative (Options.withDefaults refuses negative settings).
func satMul(n int, d time.Duration) time.Duration {
	if n <= 0 || d <= 0 {
		return 0
	}
	if d > math.MaxInt64/time.Duration(n) {
		return math.MaxInt64
	}
	return time.Duration(n) * d
}

// satAdd is a+b for durations that are not negative, saturating.
func satAdd(a, b time.Duration) time.Duration {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// maxTokenLife caps how long a token is trusted, whatever expires_in says:
// a revoked token is then at worst a day old.
const maxTokenLife = 24 * time.Hour

// maxTokenBody bounds a token response and so each cached token. Real
// responses are a few KiB (Docker Hub's carries its token twice); a token
// far larger could not be sent anyway, as servers cap a request header line
// at 8 to 16 KiB.
const maxTokenBody = 64 << 10

// maxChallenge bounds what a challenge contributes to a token request:
// realm, service and scope together.
const maxChallenge = 8 << 10

type tokenResponse struct {
	Token       string `json:"token"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
}

// fetchToken asks the realm for a token, with Basic credentials when they are
// configured and anonymously otherwise (Docker Hub issues anonymous tokens
// for public repositories).
func (a *authenticator) fetchToken(ctx context.Context, c *call, realm, service string, scopes []string) (cachedToken, error) {
	tc := &call{upstream: c.upstream, op: "token", method: http.MethodGet, repo: c.repo}
	u, err := url.Parse(realm)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return cachedToken{}, tc.errorf(ErrInvalid, nil, "challenge names an unusable token realm %q", realm)
	}
	q := u.Query()
	if service != "" {
		q.Set("service", service)
	}
	for _, s := range scopes {
		q.Add("scope", s)
	}
	u.RawQuery = q.Encode()
	tc.url = u.String()

	user, pass, err := a.credentials(ctx, tc)
	if err != nil {
		return cachedToken{}, err
	}
	if user != "" || pass != "" {
		if !credentialsMayGo(u, a.r.base) {
			return cachedToken{}, tc.errorf(ErrDenied, nil, "refusing to send credentials to plain-HTTP token realm %s", u.Host)
		}
		tc.authz = basicAuth(user, pass)
	}
	issued := a.now()
	resp, err := a.r.do(ctx, tc)
	if err != nil {
		return cachedToken{}, err
	}
	defer resp.Body.Close()
	var tr tokenResponse
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBody+1))
	if err != nil {
		return cachedToken{}, err
	}
	if len(body) > maxTokenBody {
		return cachedToken{}, tc.errorf(ErrInvalid, nil, "token response larger than %d bytes", maxTokenBody)
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return cachedToken{}, tc.errorf(ErrInvalid, err, "token response is not JSON")
	}
	value := tr.Token
	if value == "" {
		value = tr.AccessToken
	}
	if value == "" {
		return cachedToken{}, tc.errorf(ErrInvalid, nil, "token response has neither token nor access_token")
	}
	life := time.Duration(tr.ExpiresIn) * time.Second
	if tr.ExpiresIn <= 0 {
		life = 60 * time.Second // the distribution token spec's default
	}
	if tr.ExpiresIn > int64(maxTokenLife/time.Second) {
		// Also keeps the multiplication above from overflowing into a
		// token that is stale at once and fetched for every request.
		life = maxTokenLife
	}
	// Stop using a token a little before it expires, so a request does not
	// set out with a token that dies in flight.
	margin := min(life/5, 30*time.Second)
	return cachedToken{value: value, refresh: issued.Add(life - margin)}, nil
}

// credentialsMayGo reports whether the upstream's credentials may be sent to
// token realm u: over https, or, for an upstream that is itself plain HTTP
// (a private mirror, a test), to the upstream's own host. Anything else
// would put them on the wire in clear to a party the operator never named.
func credentialsMayGo(u, base *url.URL) bool {
	if u.Scheme == "https" {
		return true
	}
	return base.Scheme == "http" && strings.EqualFold(u.Hostname(), base.Hostname())
}

// credentials asks the configured callback; nil means anonymous.
func (a *authenticator) credentials(ctx context.Context, c *call) (string, string, error) {
	if a.r.o.Credentials == nil {
		return "", "", nil
	}
	user, pass, err := a.r.o.Credentials(ctx)
	if err != nil {
		return "", "", c.errorf(ErrDenied, err, "reading credentials")
	}
	return user, pass, nil
}

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}
