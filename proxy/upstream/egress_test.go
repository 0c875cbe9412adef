package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestClassOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		addr string
		want addrClass
	}{
		{"8.8.8.8", classPublic},
		{"203.0.113.10", classPublic},
		{"2001:4860:4860::8888", classPublic},
		{"127.0.0.1", classLoopback},
		{"127.8.9.10", classLoopback},
		{"::1", classLoopback},
		{"::ffff:127.0.0.1", classLoopback},
		{"10.1.2.3", classPrivate},
		{"172.16.0.1", classPrivate},
		{"192.168.1.1", classPrivate},
		{"fd00::1", classPrivate},
		{"100.64.0.1", classPrivate},
		{"169.254.169.254", classNever},
		{"::ffff:169.254.169.254", classNever},
		{"64:ff9b::a9fe:a9fe", classNever}, // NAT64 form of 169.254.169.254
		{"64:ff9b::7f00:1", classLoopback},
		{"fe80::1", classNever},
		{"fe80::1%eth0", classNever},
		{"0.0.0.0", classNever},
		{"0.1.2.3", classNever},
		{"::", classNever},
		{"224.0.0.1", classNever},
		{"ff02::1", classNever},
		{"255.255.255.255", classNever},
		{"240.0.0.1", classNever},
		// Cloud metadata and host agents outside link-local: Azure's
		// WireServer (a public address), AWS's IPv6 instance metadata (a
		// unique local address) and Alibaba's (in the shared range).
		{"168.63.129.16", classNever},
		{"::ffff:168.63.129.16", classNever},
		{"fd00:ec2::254", classNever},
		{"100.100.100.200", classNever},
		{"168.63.129.17", classPublic},
		{"fd00:ec2::253", classPrivate},
	}
	for _, tt := range tests {
		if got := classOf(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("classOf(%s) = %s, want %s", tt.addr, got, tt.want)
		}
	}
}

// fakeNet is a name-mapping test seam, not a mock of behaviour. The hop
// rules depend on where the upstream is, and this machine has only
// loopback, so fakeNet gives loopback listeners public-looking (TEST-NET)
// and private names and addresses: the Registry resolves through lookup and
// its transports dial through dial, which routes a fake address to the real
// listener behind it. Everything said on the connections is real HTTP to
// real servers. Addresses without a route are never connected to; dialled
// records every address asked for, so a test can prove a forbidden one was
// refused before dialling.
type fakeNet struct {
	mu      sync.Mutex
	names   map[string][]netip.Addr
	routes  map[netip.AddrPort]string
	dialled []string
}

func newFakeNet() *fakeNet {
	return &fakeNet{names: map[string][]netip.Addr{}, routes: map[netip.AddrPort]string{}}
}

// name makes host resolve to addrs.
func (f *fakeNet) name(host string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range addrs {
		f.names[host] = append(f.names[host], netip.MustParseAddr(a))
	}
}

// route makes a connection to addr:port reach the real listener srv.
func (f *fakeNet) route(addr string, port uint16, srv *httptest.Server) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[netip.AddrPortFrom(netip.MustParseAddr(addr), port)] = srv.Listener.Addr().String()
}

func (f *fakeNet) lookup(_ context.Context, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a, ok := f.names[host]; ok {
		return slices.Clone(a), nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (f *fakeNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	f.dialled = append(f.dialled, addr)
	f.mu.Unlock()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	p, _ := strconv.ParseUint(port, 10, 16)
	addrs, err := f.lookup(ctx, host)
	if a, perr := netip.ParseAddr(host); perr == nil {
		addrs, err = []netip.Addr{a}, nil
	}
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, uint16(p))
		f.mu.Lock()
		real, ok := f.routes[ap]
		f.mu.Unlock()
		if ok {
			return d.DialContext(ctx, network, real)
		}
		if a.IsLoopback() {
			return d.DialContext(ctx, network, ap.String())
		}
	}
	return nil, fmt.Errorf("fakeNet: no route to %s", addr)
}

func (f *fakeNet) wasDialled(hostport string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.dialled, hostport)
}

// newFakeNetClient is newClient with the Registry's resolution and dialling
// going through f.
func newFakeNetClient(t *testing.T, f *fakeNet, url string, edit ...func(*Options)) *Registry {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	tr.DialContext = f.dial
	t.Cleanup(tr.CloseIdleConnections)
	r := newClient(t, url, append([]func(*Options){func(o *Options) { o.Transport = tr }}, edit...)...)
	r.guard.lookup = f.lookup
	return r
}

// cdnFor is a CDN listener serving blobs of next under /cdn/..., counting
// its requests.
func cdnFor(t *testing.T, next http.Handler) (*httptest.Server, *atomic.Int64) {
	var hits atomic.Int64
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		inner := r.Clone(r.Context())
		inner.URL.Path = strings.TrimPrefix(r.URL.Path, "/cdn")
		next.ServeHTTP(w, inner)
	}))
	return srv, &hits
}

// redirectBlobs sends blob GETs to base + "/cdn" + path.
func redirectBlobs(next http.Handler, base string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, base+"/cdn"+r.URL.Path, http.StatusTemporaryRedirect)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func portOf(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// TestRedirectTargets drives a public upstream (registry.test, a TEST-NET
// address) and a private one (registry.corp.test, 10.0.0.5) that redirect
// blobs to the targets below, and checks which are followed. A refused hop
// fails with ErrInvalid, is not retried, and is never dialled.
func TestRedirectTargets(t *testing.T) {
	t.Parallel()
	const (
		publicUp  = "203.0.113.10"
		privateUp = "10.0.0.5"
		cdnPublic = "198.51.100.7"
		cdnCorp   = "10.0.0.6"
	)
	tests := []struct {
		name      string
		upstream  string // "public" or "private"
		target    string // redirect base; CDN replaced by the CDN listener's port
		internal  []string
		follow    bool
		neverDial string // an address that must not be dialled
	}{
		{name: "public CDN", upstream: "public", target: "http://cdn.test:CDN", follow: true},
		{name: "loopback literal", upstream: "public", target: "http://127.0.0.1:CDN", neverDial: "127.0.0.1:CDN"},
		{name: "name resolving to loopback", upstream: "public", target: "http://sneaky.test:CDN", neverDial: "127.0.0.1:CDN"},
		{name: "IPv6 loopback", upstream: "public", target: "http://[::1]:CDN", neverDial: "[::1]:CDN"},
		{name: "cloud metadata literal", upstream: "public", target: "http://169.254.169.254", neverDial: "169.254.169.254:80"},
		{name: "name resolving to metadata", upstream: "public", target: "http://metadata.test", neverDial: "169.254.169.254:80"},
		{name: "metadata even when listed", upstream: "public", target: "http://metadata.test", internal: []string{"metadata.test"}, neverDial: "169.254.169.254:80"},
		{name: "IPv6 link-local", upstream: "public", target: "http://[fe80::1]:CDN", neverDial: "[fe80::1]:CDN"},
		{name: "unspecified", upstream: "public", target: "http://0.0.0.0:CDN", neverDial: "0.0.0.0:CDN"},
		{name: "private CDN from public upstream", upstream: "public", target: "http://cdn.corp.test:CDN", neverDial: cdnCorp + ":CDN"},
		{name: "listed internal host", upstream: "public", target: "http://cdn.internal.test:CDN", internal: []string{"CDN.internal.test"}, follow: true},
		{name: "mixed answer dials only the public address", upstream: "public", target: "http://mixed.test:CDN", follow: true, neverDial: "127.0.0.1:CDN"},
		{name: "private CDN from private upstream", upstream: "private", target: "http://cdn.corp.test:CDN", follow: true},
		{name: "loopback from private upstream", upstream: "private", target: "http://127.0.0.1:CDN", neverDial: "127.0.0.1:CDN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			cdn, hits := cdnFor(t, inner)
			port := portOf(t, cdn)
			p, _ := strconv.ParseUint(port, 10, 16)
			target := strings.ReplaceAll(tt.target, "CDN", port)
			neverDial := strings.ReplaceAll(tt.neverDial, "CDN", port)

			f := newFakeNet()
			f.name("cdn.test", cdnPublic)
			f.route(cdnPublic, uint16(p), cdn)
			f.name("cdn.corp.test", cdnCorp)
			f.route(cdnCorp, uint16(p), cdn)
			f.name("sneaky.test", "127.0.0.1")
			f.name("cdn.internal.test", "127.0.0.1")
			f.name("metadata.test", "169.254.169.254")
			f.name("mixed.test", "127.0.0.1", cdnPublic)

			up := serve(t, redirectBlobs(inner, target))
			host, addr := "registry.test", publicUp
			if tt.upstream == "private" {
				host, addr = "registry.corp.test", privateUp
			}
			f.name(host, addr)
			f.route(addr, 80, up)
			var requests atomic.Int64
			r := newFakeNetClient(t, f, "http://"+host, func(o *Options) {
				o.InternalRedirectHosts = tt.internal
				o.Observe = func(e Event) {
					if e.Op == "blob" {
						requests.Add(1)
					}
				}
			})
			err := pull(t, r, s)
			if tt.follow {
				if err != nil {
					t.Fatalf("redirect to %s not followed: %v", target, err)
				}
				if hits.Load() != 1 {
					t.Errorf("CDN served %d requests, want 1", hits.Load())
				}
			} else {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("redirect to %s: %v, want ErrInvalid", target, err)
				}
				if hits.Load() != 0 {
					t.Errorf("CDN served %d requests through a refused redirect", hits.Load())
				}
				if n := requests.Load(); n != 2 {
					t.Errorf("%d blob round trips, want 2 (redirect and refused hop, no retry)", n)
				}
			}
			if neverDial != "" && f.wasDialled(neverDial) {
				t.Errorf("%s was dialled", neverDial)
			}
		})
	}
}

// TestRealmTargets: a token realm is a hop off the origin like a redirect,
// under the same rules.
func TestRealmTargets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		realm  string // TS is replaced by the token server's port
		follow bool
	}{
		{name: "public realm", realm: "http://auth.test:TS/token", follow: true},
		{name: "loopback realm", realm: "http://127.0.0.1:TS/token"},
		{name: "metadata realm", realm: "http://169.254.169.254/latest/meta-data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			ts := newTokenServer(t, "", "")
			port := portOf(t, ts.Server)
			p, _ := strconv.ParseUint(port, 10, 16)
			f := newFakeNet()
			f.name("auth.test", "198.51.100.8")
			f.route("198.51.100.8", uint16(p), ts.Server)
			up := serve(t, &bearerGate{next: inner, ts: ts, realm: strings.ReplaceAll(tt.realm, "TS", port)})
			f.name("registry.test", "203.0.113.10")
			f.route("203.0.113.10", 80, up)
			r := newFakeNetClient(t, f, "http://registry.test")
			err := pull(t, r, s)
			if tt.follow {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("pull: %v, want ErrInvalid", err)
			}
			if n := ts.requests.Load(); n != 0 {
				t.Errorf("forbidden realm received %d requests", n)
			}
			if f.wasDialled("169.254.169.254:80") {
				t.Error("metadata address was dialled")
			}
		})
	}
}

// TestRedirectToSelf: an upstream on loopback may redirect to loopback (the
// CDN of TestBlobRedirectToCDN), but never to airlock's own listeners,
// however they are written in the configuration.
func TestRedirectToSelf(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	admin, adminHits := cdnFor(t, inner)
	port := portOf(t, admin)
	for _, self := range []string{"127.0.0.1:" + port, ":" + port, "0.0.0.0:" + port, "[::]:" + port, "localhost:" + port} {
		t.Run(self, func(t *testing.T) {
			up := serve(t, redirectBlobs(inner, admin.URL))
			r := newClient(t, up.URL, func(o *Options) { o.SelfAddrs = []string{"127.0.0.1:1", self} })
			if err := pull(t, r, s); !errors.Is(err, ErrInvalid) {
				t.Fatalf("redirect to own listener %s: %v, want ErrInvalid", self, err)
			}
		})
	}
	// Other spellings of the listener's address in the redirect itself: the
	// port with leading zeros (which the dialer reads as the same port) and
	// an IPv4-mapped IPv6 literal.
	for _, target := range []string{
		"http://127.0.0.1:00" + port,
		"http://[::ffff:127.0.0.1]:" + port,
	} {
		t.Run(target, func(t *testing.T) {
			up := serve(t, redirectBlobs(inner, target))
			r := newClient(t, up.URL, func(o *Options) { o.SelfAddrs = []string{":" + port} })
			if err := pull(t, r, s); !errors.Is(err, ErrInvalid) {
				t.Fatalf("redirect to own listener as %s: %v, want ErrInvalid", target, err)
			}
		})
	}
	if n := adminHits.Load(); n != 0 {
		t.Errorf("own listener received %d requests", n)
	}
	// The same redirect without the listener named is followed.
	r := newClient(t, serve(t, redirectBlobs(inner, admin.URL)).URL)
	if err := pull(t, r, s); err != nil {
		t.Fatal(err)
	}
}

// TestRedirectGuardWithoutHTTPTransport: a Transport that is not an
// *http.Transport cannot be hooked at the dial; hops through it are checked
// by name before the round trip.
func TestRedirectGuardWithoutHTTPTransport(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	f := newFakeNet()
	up := serve(t, redirectBlobs(inner, "http://169.254.169.254"))
	f.name("registry.test", "203.0.113.10")
	f.route("203.0.113.10", 80, up)
	tr := &http.Transport{DialContext: f.dial}
	t.Cleanup(tr.CloseIdleConnections)
	var rt roundTripperFunc = tr.RoundTrip
	r := newClient(t, "http://registry.test", func(o *Options) { o.Transport = rt; o.HeaderTimeout = 5 * time.Second })
	r.guard.lookup = f.lookup
	if err := pull(t, r, s); !errors.Is(err, ErrInvalid) {
		t.Fatalf("pull: %v, want ErrInvalid", err)
	}
	if f.wasDialled("169.254.169.254:80") {
		t.Error("metadata address was dialled")
	}
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestRedirectGuardThroughHTTPProxy: behind an HTTP proxy airlock dials the
// proxy, not the hop's target, so the target is checked by name and the
// (loopback) proxy itself is not mistaken for a forbidden target.
func TestRedirectGuardThroughHTTPProxy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		target string
		follow bool
	}{
		{name: "public CDN", target: "http://cdn.test", follow: true},
		{name: "name resolving to loopback", target: "http://sneaky.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			inner := realRegistry(false)
			s := seed(t, inner, "app", "v1")
			cdn, hits := cdnFor(t, inner)
			f := newFakeNet()
			f.name("registry.test", "203.0.113.10")
			f.route("203.0.113.10", 80, serve(t, redirectBlobs(inner, tt.target)))
			f.name("cdn.test", "198.51.100.7")
			f.route("198.51.100.7", 80, cdn)
			f.name("sneaky.test", "127.0.0.1")
			// A forward proxy on loopback, resolving through f as a
			// proxy at the edge of the network would.
			out := &http.Transport{DialContext: f.dial}
			t.Cleanup(out.CloseIdleConnections)
			var proxied atomic.Int64
			proxy := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				proxied.Add(1)
				req := r.Clone(r.Context())
				req.RequestURI = ""
				resp, err := out.RoundTrip(req)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadGateway)
					return
				}
				defer resp.Body.Close()
				for k, v := range resp.Header {
					w.Header()[k] = v
				}
				w.WriteHeader(resp.StatusCode)
				_, _ = io.Copy(w, resp.Body)
			}))
			proxyURL, _ := url.Parse(proxy.URL)
			r := newFakeNetClient(t, f, "http://registry.test", func(o *Options) {
				o.Transport.(*http.Transport).Proxy = http.ProxyURL(proxyURL)
			})
			err := pull(t, r, s)
			if tt.follow {
				if err != nil {
					t.Fatalf("pull through proxy: %v", err)
				}
				if hits.Load() != 1 {
					t.Errorf("CDN served %d requests, want 1", hits.Load())
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("pull: %v, want ErrInvalid", err)
			}
			if n := proxied.Load(); n != 2 {
				t.Errorf("proxy carried %d requests, want 2 (manifest, blob redirect) and not the refused hop", n)
			}
		})
	}
}

// TestRedirectToTheProxyItself: with a forward proxy on loopback (a
// sidecar), a redirect to the proxy's own address is not proxied (no proxy
// takes loopback targets) and must not be dialled directly either: that
// would reach a loopback service from a public upstream. It is refused
// like any other loopback hop, also after the proxy has carried hops.
func TestRedirectToTheProxyItself(t *testing.T) {
	t.Parallel()
	inner := realRegistry(false)
	s := seed(t, inner, "app", "v1")
	cdn, _ := cdnFor(t, inner)
	f := newFakeNet()
	f.name("cdn.test", "198.51.100.7")
	f.route("198.51.100.7", 80, cdn)
	out := &http.Transport{DialContext: f.dial}
	t.Cleanup(out.CloseIdleConnections)
	var direct atomic.Int64
	proxy := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !r.URL.IsAbs() {
			direct.Add(1) // origin-form: dialled as a server, not a proxy
			w.WriteHeader(http.StatusNotFound)
			return
		}
		req := r.Clone(r.Context())
		req.RequestURI = ""
		resp, err := out.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	proxyURL, _ := url.Parse(proxy.URL)
	var toProxy atomic.Bool
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		target := "http://cdn.test"
		if toProxy.Load() {
			target = proxy.URL
		}
		redirectBlobs(inner, target).ServeHTTP(w, r)
	})
	f.name("registry.test", "203.0.113.10")
	f.route("203.0.113.10", 80, serve(t, up))
	r := newFakeNetClient(t, f, "http://registry.test", func(o *Options) {
		// As http.ProxyFromEnvironment decides: loopback is never proxied.
		o.Transport.(*http.Transport).Proxy = func(req *http.Request) (*url.URL, error) {
			if a, err := netip.ParseAddr(req.URL.Hostname()); err == nil && a.IsLoopback() {
				return nil, nil
			}
			return proxyURL, nil
		}
	})
	if err := pull(t, r, s); err != nil {
		t.Fatalf("pull through the proxy: %v", err)
	}
	toProxy.Store(true)
	if err := pull(t, r, s); !errors.Is(err, ErrInvalid) {
		t.Fatalf("redirect to the proxy's own address: %v, want ErrInvalid", err)
	}
	if n := direct.Load(); n != 0 {
		t.Errorf("the proxy was dialled directly %d times", n)
	}
}
