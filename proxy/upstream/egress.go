package upstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// An upstream answers with URLs of its choosing: redirect Locations (a blob
// on a CDN) and token realms. Followed blindly, they make airlock fetch from
// wherever the upstream points, cloud metadata at 169.254.169.254, a service
// on airlock's own loopback or its admin API included, and stream what it
// finds there towards a client. The upstream's own origin is trusted (an
// operator configured it); every other hop goes through a hopGuard, which
// checks the address that is actually dialled, so a name that resolves to
// 127.0.0.1 is caught as surely as a literal.

// addrClass says what an address reaches, from the open internet inwards.
type addrClass int

const (
	classPublic addrClass = iota
	// classPrivate: RFC 1918, unique local fc00::/7 and shared (CGNAT)
	// 100.64.0.0/10, which clusters and overlay networks use internally.
	classPrivate
	classLoopback
	// classNever: unspecified, link-local (cloud metadata lives there),
	// multicast, 0.0.0.0/8, 240.0.0.0/4 and the cloud metadata and host
	// agent addresses outside link-local (cloudMetadata). No redirect may
	// lead there, whatever the configuration says.
	classNever
)

func (c addrClass) String() string {
	switch c {
	case classPrivate:
		return "private"
	case classLoopback:
		return "loopback"
	case classNever:
		return "link-local, unspecified, multicast or cloud metadata"
	}
	return "public"
}

var (
	cgnat   = netip.MustParsePrefix("100.64.0.0/10")
	thisNet = netip.MustParsePrefix("0.0.0.0/8")
	// reserved holds 240.0.0.0/4, broadcast included.
	reserved = netip.MustParsePrefix("240.0.0.0/4")
	// nat64 embeds an IPv4 address in IPv6 (RFC 6052); a NAT64 gateway
	// would connect to the embedded address.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
	// cloudMetadata are the instance metadata and host agent endpoints
	// that are not link-local, so the link-local rule misses them: Azure's
	// WireServer (a public address that hands out the VM's configuration
	// and certificates), AWS's IPv6 instance metadata (a unique local
	// address) and Alibaba Cloud's (in the shared range). A private
	// upstream may redirect to private addresses, never to these.
	cloudMetadata = []netip.Prefix{
		netip.MustParsePrefix("168.63.129.16/32"),
		netip.MustParsePrefix("fd00:ec2::254/128"),
		netip.MustParsePrefix("100.100.100.200/32"),
	}
)

func isCloudMetadata(a netip.Addr) bool {
	for _, p := range cloudMetadata {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// classOf classifies a, looking through IPv4-mapped and NAT64 forms.
func classOf(a netip.Addr) addrClass {
	a = a.Unmap()
	if nat64.Contains(a) {
		b := a.As16()
		a = netip.AddrFrom4([4]byte(b[12:]))
	}
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsLinkLocalUnicast(), a.IsMulticast(),
		a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), thisNet.Contains(a), reserved.Contains(a),
		isCloudMetadata(a.WithZone("")):
		return classNever
	case a.IsLoopback():
		return classLoopback
	case a.IsPrivate(), cgnat.Contains(a):
		return classPrivate
	}
	return classPublic
}

// hopGuard decides which addresses a hop off the upstream's origin may
// connect to:
//
//   - never a classNever address, nor one of airlock's own listeners;
//   - a public address always;
//   - a loopback or private address only when the upstream itself resolves
//     to an address of that class (a registry on the same private network
//     redirecting to its own storage), or when the hop's host is listed in
//     Options.InternalRedirectHosts.
type hopGuard struct {
	upstream   string
	originHost string          // the upstream URL's host name, without port
	internal   map[string]bool // lower-cased InternalRedirectHosts
	self       []string        // Options.SelfAddrs

	// lookup resolves a host name. It is net.DefaultResolver's; tests
	// replace it to give loopback listeners public-looking names (see
	// fakeNet), which is the only way to show a public upstream being
	// refused a loopback redirect on a machine whose only network is
	// loopback.
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// dial connects to an address the guard has checked: always an IP
	// literal and port.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// localAddrs lists this machine's interface addresses, to recognise a
	// listener on ":port" reached through any of them.
	localAddrs func() ([]netip.Addr, error)
}

func newHopGuard(o Options, base *url.URL) *hopGuard {
	g := &hopGuard{
		upstream:   o.Name,
		originHost: strings.ToLower(base.Hostname()),
		internal:   map[string]bool{},
		self:       o.SelfAddrs,
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		},
		localAddrs: interfaceAddrs,
	}
	for _, h := range o.InternalRedirectHosts {
		g.internal[strings.ToLower(strings.Trim(h, "[]"))] = true
	}
	return g
}

// refusedError is a hop the guard would not connect to. It is permanent:
// retrying leads to the same place.
type refusedError struct {
	host string
	addr netip.Addr
	why  string
}

func (e *refusedError) Error() string {
	if e.addr.IsValid() && e.addr.String() != e.host {
		return fmt.Sprintf("refused to connect to %s (%s): %s", e.host, e.addr, e.why)
	}
	return fmt.Sprintf("refused to connect to %s: %s", e.host, e.why)
}

// transport returns the RoundTripper for hops off the origin. An
// *http.Transport is cloned with the guard as its dialer, so the check is on
// the address dialled. Any other RoundTripper cannot be hooked at the dial:
// hops through it are checked by resolving the host just before the round
// trip, which a DNS answer that changes in between could evade.
func (g *hopGuard) transport(rt http.RoundTripper) http.RoundTripper {
	t, ok := rt.(*http.Transport)
	if !ok || t.DialTLSContext != nil || t.DialTLS != nil || t.Dial != nil { //nolint:staticcheck // Dial and DialTLS are deprecated but still honoured by net/http
		return &precheckTransport{g: g, next: rt}
	}
	gt := t.Clone()
	g.dial = t.DialContext
	if g.dial == nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		g.dial = d.DialContext
	}
	gt.DialContext = g.dialContext
	if proxy := t.Proxy; proxy != nil {
		gt.Proxy = func(req *http.Request) (*url.URL, error) {
			p, err := proxy(req)
			if p == nil || err != nil {
				return p, err
			}
			// The proxy resolves and connects to the target, not
			// airlock, so the target can only be checked by name, here.
			if err := g.precheck(req.Context(), req.URL); err != nil {
				return nil, err
			}
			if pd, ok := req.Context().Value(proxyDialsKey{}).(*proxyDials); ok {
				pd.add(proxyAddr(p))
			}
			return p, nil
		}
		return &markProxyDials{next: gt}
	}
	return gt
}

// proxyDials is the proxy addresses the transport chose for one request.
// A dial to one of them, made for that request, is a connection to the
// operator's proxy and is not checked as the hop's target. It is known per
// request, not per address: a hop whose target is the proxy's own address
// (a sidecar on loopback, which no proxy setting proxies to) must still be
// checked, like any loopback hop.
type proxyDials struct {
	mu    sync.Mutex
	addrs []string
}

type proxyDialsKey struct{}

func (pd *proxyDials) add(addr string) {
	pd.mu.Lock()
	defer pd.mu.Unlock()
	if !slices.Contains(pd.addrs, addr) {
		pd.addrs = append(pd.addrs, addr)
	}
}

func (pd *proxyDials) has(addr string) bool {
	pd.mu.Lock()
	defer pd.mu.Unlock()
	return slices.Contains(pd.addrs, addr)
}

// markProxyDials gives each request its proxyDials. net/http dials with a
// context that keeps the values of the request's, so dialContext finds it.
type markProxyDials struct{ next *http.Transport }

func (m *markProxyDials) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := context.WithValue(req.Context(), proxyDialsKey{}, &proxyDials{})
	return m.next.RoundTrip(req.WithContext(ctx))
}

// dialContext resolves addr itself, checks every address and dials only
// those allowed, by IP, so nothing is resolved again between check and
// connection.
func (g *hopGuard) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if pd, ok := ctx.Value(proxyDialsKey{}).(*proxyDials); ok && pd.has(addr) {
		return g.dial(ctx, network, addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	addrs, err := g.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	var refused, dialErr error
	for _, a := range addrs {
		if err := g.check(ctx, host, a, port); err != nil {
			refused = err
			continue
		}
		conn, err := g.dial(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return conn, nil
		}
		dialErr = err
	}
	if dialErr != nil {
		return nil, dialErr
	}
	return nil, refused
}

// precheck resolves u's host and checks every address it names.
func (g *hopGuard) precheck(ctx context.Context, u *url.URL) error {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	addrs, err := g.resolve(ctx, u.Hostname())
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if err := g.check(ctx, u.Hostname(), a, port); err != nil {
			return err
		}
	}
	return nil
}

func (g *hopGuard) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	addrs, err := g.lookup(ctx, host)
	if err == nil && len(addrs) == 0 {
		err = fmt.Errorf("%s has no addresses", host)
	}
	return addrs, err
}

// check applies the rules of hopGuard to one address of host.
func (g *hopGuard) check(ctx context.Context, host string, a netip.Addr, port string) error {
	a = a.Unmap()
	refuse := func(why string) error { return &refusedError{host: host, addr: a, why: why} }
	class := classOf(a)
	if class == classNever {
		return refuse("a " + class.String() + " address is never a valid redirect or token realm")
	}
	if g.isSelf(ctx, a, port) {
		return refuse("it is airlock's own listener")
	}
	if class == classPublic || g.internal[strings.ToLower(host)] {
		return nil
	}
	for _, ua := range g.originAddrs(ctx) {
		if classOf(ua) == class {
			return nil
		}
	}
	return refuse(fmt.Sprintf("a %s address, and upstream %s is not on one; list %s in the upstream's internalRedirectHosts if it is meant to be reached", class, g.upstream, host))
}

// originAddrs resolves the upstream's own host. It is asked again on each
// guarded dial (rare: connections are reused) so that it follows the
// upstream's DNS.
func (g *hopGuard) originAddrs(ctx context.Context) []netip.Addr {
	addrs, err := g.resolve(ctx, g.originHost)
	if err != nil {
		return nil
	}
	return addrs
}

// isSelf reports whether a:port is one of airlock's own listeners. A
// listener on an unspecified address (":5001", "0.0.0.0:5001") is reached
// through loopback and through every interface address.
func (g *hopGuard) isSelf(ctx context.Context, a netip.Addr, port string) bool {
	for _, s := range g.self {
		host, p, err := net.SplitHostPort(s)
		if err != nil || !samePort(p, port) {
			continue
		}
		var own []netip.Addr
		if la, err := netip.ParseAddr(host); host == "" || (err == nil && la.IsUnspecified()) {
			if a.IsLoopback() {
				return true
			}
			own, _ = g.localAddrs()
		} else if own, err = g.resolve(ctx, host); err != nil {
			continue
		}
		for _, o := range own {
			if o.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// samePort compares ports as the dialer reads them: as numbers, so that a
// redirect to "127.0.0.1:05001" is recognised as port 5001.
func samePort(a, b string) bool {
	pa, errA := strconv.ParseUint(a, 10, 16)
	pb, errB := strconv.ParseUint(b, 10, 16)
	if errA != nil || errB != nil {
		return a == b
	}
	return pa == pb
}

func interfaceAddrs() ([]netip.Addr, error) {
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifs))
	for _, ia := range ifs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}

// proxyAddr is the host:port net/http dials for proxy URL p.
func proxyAddr(p *url.URL) string {
	port := p.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443", "socks5": "1080", "socks5h": "1080"}[p.Scheme]
	}
	return net.JoinHostPort(p.Hostname(), port)
}

// precheckTransport guards hops through a RoundTripper whose dialer cannot be
// hooked.
type precheckTransport struct {
	g    *hopGuard
	next http.RoundTripper
}

func (t *precheckTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.g.precheck(req.Context(), req.URL); err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	return t.next.RoundTrip(req)
}
