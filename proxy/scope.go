package proxy

import "net/http"

// UpstreamOf names the upstream that ServeHTTP would route r to with the
// routing table in use now, or "" when r routes to none: the /v2/ base
// endpoint, the catalog, a malformed path, an unknown namespace. A request
// that an upstream's allow-list refuses still names that upstream.
//
// It is how client authentication (package pullauth) restricts upstreams
// to some users; it routes with the same ParseEndpoint and Router as
// ServeHTTP, so no spelling of a pull (prefix, ?ns=, default upstream)
// reaches an upstream under another name.
func (p *Proxy) UpstreamOf(r *http.Request) string {
	ep, err := ParseEndpoint(r.URL.EscapedPath())
	if err != nil || ep.Kind == KindBase || ep.Kind == KindCatalog {
		return ""
	}
	route, _ := p.table.Load().router.Route(ep, r.URL.Query())
	if route.Upstream == nil {
		return ""
	}
	return route.Upstream.Name
}
