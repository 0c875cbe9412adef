package proxy

import (
	"net/url"
	"testing"
)

// Known must agree with the keys routing gives: on a Docker Hub-style
// upstream "nginx" is routed to "library/nginx", so an admin's block on
// "dockerhub/nginx@..." would be recorded for a repository no pull ever
// reaches, and refuse nothing. It is refused instead.
func TestKnownAgreesWithRouteKeys(t *testing.T) {
	t.Parallel()
	rt, err := NewRouter([]Upstream{
		{Name: "dockerhub", Hosts: []string{"docker.io"}, Library: true},
		{Name: "ghcr", Hosts: []string{"ghcr.io"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key  string
		want bool
	}{
		{"dockerhub/library/nginx", true},
		{"dockerhub/nginx", false},
		{"dockerhub/bitnami/nginx", true},
		{"ghcr/nginx", true},
		{"ghcr/org/app", true},
		{"nowhere/app", false},
		{"dockerhub/", false},
		{"dockerhub/Library/nginx", false},
		{"dockerhub/library/../nginx", false},
	} {
		if got := rt.Known(tc.key); got != tc.want {
			t.Errorf("Known(%q) = %v, want %v", tc.key, got, tc.want)
		}
	}
	// Every key Known accepts is one a request can reach: by prefix and
	// by ?ns=.
	for _, c := range []struct {
		ep Endpoint
		q  url.Values
	}{
		{Endpoint{Kind: KindManifest, Name: "dockerhub/nginx", Reference: "latest"}, nil},
		{Endpoint{Kind: KindManifest, Name: "nginx", Reference: "latest"}, url.Values{"ns": {"docker.io"}}},
		{Endpoint{Kind: KindManifest, Name: "library/nginx", Reference: "latest"}, url.Values{"ns": {"docker.io"}}},
	} {
		r, err := rt.Route(c.ep, c.q)
		if err != nil {
			t.Fatal(err)
		}
		if r.Key() != "dockerhub/library/nginx" || !rt.Known(r.Key()) {
			t.Errorf("%s %v routes to %q (known %v), want dockerhub/library/nginx", c.ep.Name, c.q, r.Key(), rt.Known(r.Key()))
		}
	}
}
