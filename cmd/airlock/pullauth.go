package main

import (
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/proxy/pullauth"
)

// pullPolicy reads the htpasswd file the auth section names and returns
// the policy the registry listener enforces. Called at start and on
// SIGHUP, so a changed Secret applies at the next reload.
func pullPolicy(c config.ClientAuth) (pullauth.Policy, error) {
	users, err := c.LoadUsers()
	if err != nil {
		return pullauth.Policy{}, err
	}
	return pullauth.Policy{Users: users, Realm: c.Realm, Upstreams: c.Upstreams}, nil
}

// pullAccess says, for the start-up line, who can pull through the
// registry listener at addr, and whether that is anyone on the network.
func pullAccess(c config.ClientAuth, p pullauth.Policy, addr net.Addr) (desc string, open bool) {
	if p.Enabled() {
		desc = fmt.Sprintf("HTTP Basic against %s (%d users)", c.Htpasswd, len(p.Users))
		if len(p.Upstreams) > 0 {
			desc += "; upstreams restricted to some users: " + strings.Join(slices.Sorted(maps.Keys(p.Upstreams)), ", ")
		}
		return desc, false
	}
	if tcp, ok := addr.(*net.TCPAddr); ok && tcp.IP.IsLoopback() {
		return "none: listening on loopback, only clients on this machine can pull", false
	}
	return fmt.Sprintf("none: anyone who can reach %s can pull; set auth.htpasswd to require credentials", addr), true
}

// logPullAccess adds a warning to the start-up line when the listener is
// open to the network without authentication, for alerts on the log.
func logPullAccess(log *slog.Logger, desc string, open bool) {
	if open {
		log.Warn("serving pulls with no client authentication", slog.String("pull_auth", desc))
	}
}
