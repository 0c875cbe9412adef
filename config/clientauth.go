package config

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/airlock-registry/airlock/proxy/pullauth"
)

// ClientAuth is authentication of the clients that pull through airlock:
// HTTP Basic against an htpasswd file, which docker login, containerd
// (hosts.toml headers, CRI credentials), podman and skopeo all speak. Without
// it anyone who can reach [Config.Listen] can pull through every upstream.
type ClientAuth struct {
	// Htpasswd is a file of "user:hash" lines with bcrypt hashes, as
	// `htpasswd -B` writes it; any other hash is an error naming the line.
	// In Kubernetes, mount it from a Secret. It is read at start and on
	// SIGHUP. Default "": no authentication.
	Htpasswd string `yaml:"htpasswd"`

	// Realm is the realm of the Basic challenge; clients show it when they
	// ask for a password. Printable ASCII without quotes. Default "airlock".
	Realm string `yaml:"realm"`

	// Upstreams restricts upstreams, by name, to the users listed, so a
	// vendor's content is served only to clients allowed to see it. Others
	// get 403 DENIED before the upstream is contacted, however they name it
	// (path prefix, ?ns= or the default upstream). An upstream not listed is
	// open to every user of the htpasswd file. Default: none.
	Upstreams map[string][]string `yaml:"upstreams"`
}

// Enabled reports whether pulls need credentials.
func (a ClientAuth) Enabled() bool { return a.Htpasswd != "" }

// check validates the auth section as written, against the configured
// upstreams; checkHost reads the file it names.
func (a *ClientAuth) check(p *problems, upstreams []Upstream) {
	if a.Htpasswd == "" {
		if a.Realm != "" || len(a.Upstreams) > 0 {
			p.add("auth.htpasswd", "required when auth.realm or auth.upstreams is set; set the path of an htpasswd file of bcrypt hashes (htpasswd -B)")
		}
		return
	}
	if a.Realm != "" {
		if err := pullauth.CheckRealm(a.Realm); err != nil {
			p.add("auth.realm", "%v", err)
		}
	}
	names := make([]string, 0, len(upstreams))
	for _, u := range upstreams {
		names = append(names, u.Name)
	}
	for _, up := range slices.Sorted(maps.Keys(a.Upstreams)) {
		key := "auth.upstreams." + up
		if !slices.Contains(names, up) {
			p.add(key, "%q is not the name of an upstream; use one of %s", up, strings.Join(names, ", "))
		}
		if len(a.Upstreams[up]) == 0 {
			p.add(key, "an empty list allows no user; list the users allowed, or remove the entry to open the upstream to every user")
		}
	}
}

// LoadUsers reads the htpasswd file, as serve does at start and on SIGHUP.
// Its errors name the key and, for a bad line, the file and line; it also
// refuses a file without users and a user in auth.upstreams that the file
// does not define, a misspelling that would lock that user out. It returns
// nil without error when authentication is off.
func (a ClientAuth) LoadUsers() (pullauth.Users, error) {
	var p problems
	users := a.checkHost(&p)
	if len(p) > 0 {
		return nil, errors.Join(p...)
	}
	return users, nil
}

// checkHost is the part of validation that reads the htpasswd file.
func (a ClientAuth) checkHost(p *problems) pullauth.Users {
	if !a.Enabled() {
		return nil
	}
	users, err := pullauth.ReadHtpasswd(a.Htpasswd)
	switch {
	case err != nil:
		p.add("auth.htpasswd", "%v", err)
		return nil
	case len(users) == 0:
		p.add("auth.htpasswd", "%s holds no users, so every pull would be refused; add users with htpasswd -B", a.Htpasswd)
	}
	for _, up := range slices.Sorted(maps.Keys(a.Upstreams)) {
		for i, user := range a.Upstreams[up] {
			if users[user] == nil {
				p.add(fmt.Sprintf("auth.upstreams.%s[%d]", up, i), "user %q is not in %s; add it with htpasswd -B or fix the spelling", user, a.Htpasswd)
			}
		}
	}
	return users
}
