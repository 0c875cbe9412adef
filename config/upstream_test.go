package config

import "testing"

func TestAllowed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		patterns []string
		repo     string
		want     bool
	}{
		{nil, "anything/at/all", true},
		{[]string{"library/*"}, "library/nginx", true},
		{[]string{"library/*"}, "library/a/b", false}, // "*" stays in one segment
		{[]string{"library/*"}, "library", false},
		{[]string{"library/*"}, "libraryx/nginx", false},
		{[]string{"library/*"}, "other/nginx", false},
		{[]string{"library/nginx"}, "library/nginx", true},
		{[]string{"library/nginx"}, "library/nginx2", false},
		{[]string{"grafana/**"}, "grafana/loki", true},
		{[]string{"grafana/**"}, "grafana/a/b/c", true},
		{[]string{"grafana/**"}, "grafana", false}, // "/**" needs a segment below
		{[]string{"grafana/**"}, "grafanax/loki", false},
		{[]string{"team-*/**"}, "team-a/app/web", true},
		{[]string{"team-*/**"}, "team/app", false},
		{[]string{"a/*/c/**"}, "a/b/c/d", true},
		{[]string{"a/*/c/**"}, "a/b/x/d", false},
		{[]string{"**"}, "x/y/z", true},
		{[]string{"app-?"}, "app-1", true},
		{[]string{"app-?"}, "app-10", false},
		{[]string{"app-[0-9]"}, "app-7", true},
		{[]string{"app-[0-9]"}, "app-x", false},
		{[]string{"x/*", "library/*"}, "library/redis", true},
		{[]string{"x/*", "y/**"}, "library/redis", false},
	} {
		u := &Upstream{Repositories: tc.patterns}
		if got := u.Allowed(tc.repo); got != tc.want {
			t.Errorf("%q.Allowed(%q) = %v, want %v", tc.patterns, tc.repo, got, tc.want)
		}
		// Every pattern used here must also pass validation.
		for _, p := range tc.patterns {
			if err := checkGlob(p); err != nil {
				t.Errorf("checkGlob(%q): %v", p, err)
			}
		}
	}
}

func TestHost(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, want string }{
		{"https://registry-1.docker.io", "registry-1.docker.io"},
		{"http://127.0.0.1:5999", "127.0.0.1:5999"},
		{"https://[::1]:443/prefix", "[::1]:443"},
		{"https://Quay.IO", "quay.io"},
		{"://bad", ""},
	} {
		u := &Upstream{URL: tc.url}
		if got := u.Host(); got != tc.want {
			t.Errorf("Host(%q) = %q, want %q", tc.url, got, tc.want)
		}
	}
}

func TestServesHost(t *testing.T) {
	t.Parallel()
	u := &Upstream{URL: "https://registry-1.docker.io", Aliases: []string{"docker.io", "index.docker.io"}}
	for host, want := range map[string]bool{
		"docker.io":            true,
		"Docker.IO":            true,
		"index.docker.io":      true,
		"registry-1.docker.io": true,
		"quay.io":              false,
		"":                     false,
		"docker.io.evil":       false,
	} {
		if got := u.ServesHost(host); got != want {
			t.Errorf("ServesHost(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestUpstreamLookup(t *testing.T) {
	t.Parallel()
	c := Default()
	if u := c.Upstream("quay"); u == nil || u.URL != "https://quay.io" {
		t.Errorf("Upstream(quay) = %+v", u)
	}
	if u := c.Upstream("nope"); u != nil {
		t.Errorf("Upstream(nope) = %+v, want nil", u)
	}
	// The returned pointer is into the Config, so changes are seen by it.
	c.Upstream("gcr").InsecureSkipVerify = true
	if !c.Upstreams[1].InsecureSkipVerify {
		t.Error("Upstream returned a copy")
	}
}

func TestUpstreamForHost(t *testing.T) {
	t.Parallel()
	c, err := Parse("hosts.yaml", []byte(`
upstreams:
  - {name: hub, url: "https://registry-1.docker.io", aliases: [docker.io]}
  - {name: quay, url: "https://quay.io"}
  - {name: mirror, url: "http://127.0.0.1:5999", aliases: [ghcr.io]}
`))
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{
		"docker.io":            "hub",
		"registry-1.docker.io": "hub",
		"quay.io":              "quay",
		"GHCR.io":              "mirror",
		"127.0.0.1:5999":       "mirror",
		"gcr.io":               "",
		"":                     "",
	} {
		got := ""
		if u := c.UpstreamForHost(host); u != nil {
			got = u.Name
		}
		if got != want {
			t.Errorf("UpstreamForHost(%q) = %q, want %q", host, got, want)
		}
	}
}
