package pullauth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"
)

// Policy is who may pull, and from which upstreams. The zero Policy turns
// authentication off: every request passes.
type Policy struct {
	// Users are the accounts allowed to pull. nil turns authentication off;
	// an empty, non-nil map refuses everyone.
	Users Users
	// Realm is the realm of the Basic challenge, which clients show when
	// they ask for a password. "" means "airlock".
	Realm string
	// Upstreams restricts the named upstreams to the listed users. An
	// upstream not named here is open to every user in Users.
	Upstreams map[string][]string
}

// Enabled reports whether the policy asks for credentials.
func (p Policy) Enabled() bool { return p.Users != nil }

// DefaultRealm is the challenge realm when a Policy names none.
const DefaultRealm = "airlock"

// Resolver names the upstream a request would be served from, or "" for a
// request no upstream serves (the /v2/ base endpoint, a path that does not
// route). It must route exactly as the wrapped handler does, or a
// restriction could be walked around by another spelling of the same pull;
// *proxy.Proxy implements it.
type Resolver interface {
	UpstreamOf(r *http.Request) string
}

// Options configure an Authenticator.
type Options struct {
	// Next serves authenticated requests. Required.
	Next http.Handler
	// Resolver routes requests to upstreams for Policy.Upstreams; required
	// when any policy restricts an upstream.
	Resolver Resolver
	// Policy is the initial policy; see SetPolicy.
	Policy Policy
	// Logger receives failed attempts (user name, client address, reason;
	// never a password or header). nil discards.
	Logger *slog.Logger
	// MaxVerifications bounds the bcrypt comparisons running at once.
	// 0 means half the CPUs, at least one: the rest keep serving pulls.
	MaxVerifications int
	// MaxWaiting bounds the comparisons waiting for a slot; more are
	// refused with 429. 0 means 64 per slot.
	MaxWaiting int
	// MaxWait is the longest a comparison waits for a slot before the
	// client gets 429. 0 means 10s.
	MaxWait time.Duration
	// CacheSize bounds the cached verifications. 0 means 4096.
	CacheSize int
	// CacheTTL is how long a verification is trusted. 0 means 10m.
	CacheTTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Registerer receives the refusal and comparison counters; nil keeps
	// them unregistered.
	Registerer prometheus.Registerer
}

// Authenticator is the middleware. Its policy can be replaced while it
// serves.
type Authenticator struct {
	next     http.Handler
	resolver Resolver
	log      *slog.Logger
	state    atomic.Pointer[state]
	cache    *verified
	flights  singleflight.Group
	metrics  *metrics

	slots      chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	maxWait    time.Duration
	// compare is bcrypt.CompareHashAndPassword; tests count calls.
	compare func(hash, password []byte) error
}

// state is one policy prepared for serving; SetPolicy swaps it whole.
type state struct {
	users Users
	// challenge is the WWW-Authenticate value of a 401.
	challenge string
	// allowed holds, per restricted upstream, the users allowed there.
	allowed map[string]map[string]bool
	// dummy is compared against for unknown users, so they cost what a
	// known user does.
	dummy []byte
}

// New returns an Authenticator serving o.Policy.
func New(o Options) (*Authenticator, error) {
	if o.Next == nil {
		return nil, errors.New("pullauth: Next is required")
	}
	a := &Authenticator{next: o.Next, resolver: o.Resolver, log: o.Logger,
		maxWaiting: int64(o.MaxWaiting), maxWait: o.MaxWait, compare: bcrypt.CompareHashAndPassword,
		metrics: newMetrics(o.Registerer)}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	n := o.MaxVerifications
	if n <= 0 {
		n = max(1, runtime.GOMAXPROCS(0)/2)
	}
	a.slots = make(chan struct{}, n)
	if a.maxWaiting <= 0 {
		a.maxWaiting = 64 * int64(n)
	}
	if a.maxWait <= 0 {
		a.maxWait = 10 * time.Second
	}
	size, ttl, now := o.CacheSize, o.CacheTTL, o.Now
	if size <= 0 {
		size = 4096
	}
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	if now == nil {
		now = time.Now
	}
	a.cache = newVerified(size, ttl, now)
	if err := a.SetPolicy(o.Policy); err != nil {
		return nil, err
	}
	return a, nil
}

// SetPolicy replaces the policy; requests already past the check finish
// under the old one. Cached verifications survive for users whose hash
// did not change. It fails, leaving the old policy, on a realm that cannot
// be quoted in a header or a restriction without a Resolver.
func (a *Authenticator) SetPolicy(p Policy) error {
	if !p.Enabled() {
		a.state.Store(nil)
		return nil
	}
	realm := p.Realm
	if realm == "" {
		realm = DefaultRealm
	}
	if err := CheckRealm(realm); err != nil {
		return err
	}
	if len(p.Upstreams) > 0 && a.resolver == nil {
		return errors.New("pullauth: restricting upstreams needs a Resolver")
	}
	st := &state{users: p.Users, challenge: fmt.Sprintf(`Basic realm="%s", charset="UTF-8"`, realm),
		allowed: map[string]map[string]bool{}}
	for up, users := range p.Upstreams {
		st.allowed[up] = map[string]bool{}
		for _, u := range users {
			st.allowed[up][u] = true
		}
	}
	dummy, err := dummyHash(p.Users)
	if err != nil {
		return err
	}
	st.dummy = dummy
	a.state.Store(st)
	return nil
}

// CheckRealm reports whether realm can be sent in a quoted challenge.
func CheckRealm(realm string) error {
	if realm == "" || strings.ContainsFunc(realm, func(r rune) bool { return r < 0x20 || r >= 0x7f || r == '"' || r == '\\' }) {
		return fmt.Errorf("realm %q must be printable ASCII without quotes or backslashes", realm)
	}
	return nil
}

// dummyHash hashes a random password at the highest cost among users, so
// that an unknown user is never answered faster than a known one.
func dummyHash(users Users) ([]byte, error) {
	cost := bcrypt.MinCost
	for _, h := range users {
		if c, err := bcrypt.Cost(h); err == nil && c > cost {
			// Users from ParseHtpasswd are at most MaxCost; others are
			// capped so that preparing a policy cannot take days.
			cost = min(c, MaxCost)
		}
	}
	pw := make([]byte, 16)
	_, _ = rand.Read(pw)
	h, err := bcrypt.GenerateFromPassword(pw, cost)
	if err != nil {
		return nil, fmt.Errorf("pullauth: preparing the unknown-user hash: %w", err)
	}
	return h, nil
}

type userKey struct{}

// User returns the authenticated user of a request that passed an
// Authenticator, for logging.
func User(ctx context.Context) (string, bool) {
	u, ok := ctx.Value(userKey{}).(string)
	return u, ok
}

func (a *Authenticator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := a.state.Load()
	if st == nil {
		a.next.ServeHTTP(w, r)
		return
	}
	user, err := a.authenticate(r.Context(), st, r)
	if err != nil {
		a.refuse(w, r, st, user, err)
		return
	}
	if up := a.restricted(st, r); up != "" && !st.allowed[up][user] {
		a.log.LogAttrs(r.Context(), slog.LevelWarn, "pull refused: user not allowed on upstream",
			slog.String("user", user), slog.String("upstream", up),
			slog.String("path", r.URL.Path), slog.String("remote", r.RemoteAddr))
		a.metrics.refusals.WithLabelValues(reasonDenied).Inc()
		writeError(w, r, http.StatusForbidden, "DENIED",
			fmt.Sprintf("user %q may not pull from upstream %q", user, up))
		return
	}
	// The credentials stop here: nothing after this needs the client's
	// password, and a handler that never sees it cannot leak it.
	r2 := r.WithContext(context.WithValue(r.Context(), userKey{}, user))
	r2.Header = r.Header.Clone()
	r2.Header.Del("Authorization")
	a.next.ServeHTTP(w, r2)
}

// Permitted reports whether the client of a request that passed the
// Authenticator may pull from upstream under the policy in force now. The
// proxy asks it again with the upstream it actually routed to: the policy
// and the routing table are swapped one after the other on a reload, and a
// request routed between the two must not slip past a restriction.
func (a *Authenticator) Permitted(ctx context.Context, upstream string) bool {
	st := a.state.Load()
	if st == nil {
		return true
	}
	allowed, restricted := st.allowed[upstream]
	if !restricted {
		return true
	}
	user, _ := User(ctx)
	return allowed[user]
}

// restricted returns the upstream r routes to when that upstream is
// restricted, or "".
func (a *Authenticator) restricted(st *state, r *http.Request) string {
	if len(st.allowed) == 0 {
		return ""
	}
	up := a.resolver.UpstreamOf(r)
	if _, ok := st.allowed[up]; !ok {
		return ""
	}
	return up
}
