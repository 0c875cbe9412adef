package main

import (
	"net"
	"strings"
	"testing"

	"github.com/airlock-registry/airlock/config"
	"github.com/airlock-registry/airlock/proxy/pullauth"
)

// TestPullAccess: the start-up line must say who can pull, and flag the
// case where anyone on the network can.
func TestPullAccess(t *testing.T) {
	t.Parallel()
	loopback := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}
	everywhere := &net.TCPAddr{IP: net.IPv6unspecified, Port: 5000}
	on := pullauth.Policy{Users: pullauth.Users{"alice": nil, "bob": nil}, Upstreams: map[string][]string{"vendor": {"alice"}}}
	auth := config.ClientAuth{Htpasswd: "/etc/airlock/auth/htpasswd"}
	for _, tc := range []struct {
		name   string
		policy pullauth.Policy
		addr   net.Addr
		want   string
		open   bool
	}{
		{"embedded default", pullauth.Policy{}, loopback, "none: listening on loopback", false},
		{"open to the network", pullauth.Policy{}, everywhere, "none: anyone who can reach [::]:5000 can pull", true},
		{"authenticated", on, everywhere, "HTTP Basic against /etc/airlock/auth/htpasswd (2 users); upstreams restricted to some users: vendor", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, open := pullAccess(auth, tc.policy, tc.addr)
			if !strings.Contains(got, tc.want) || open != tc.open {
				t.Errorf("pullAccess = %q, %v; want %q, %v", got, open, tc.want, tc.open)
			}
		})
	}
}
