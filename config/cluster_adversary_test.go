package config

import "testing"

// An advertised URL without a host ("http://:5002") sends every peer to
// its own port 5002, and one with an empty port ("http://10.0.0.12:") to
// port 80: neither is this replica's peer listener.
func TestAdvertiseNeedsHostAndPort(t *testing.T) {
	for _, s := range []string{"http://:5002", "https://:5002", "http://10.0.0.12:", "http://[::1]:"} {
		if err := advertiseProblem(s); err == nil {
			t.Errorf("advertiseProblem(%q) = nil, want an error", s)
		}
	}
	for _, s := range []string{"http://10.0.0.12:5002", "https://peer.example:5002/", "http://[fd00::1]:5002", "http://peer.example"} {
		if err := advertiseProblem(s); err != nil {
			t.Errorf("advertiseProblem(%q) = %v, want nil", s, err)
		}
	}
}
