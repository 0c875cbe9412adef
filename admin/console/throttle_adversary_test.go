package console

import (
	"fmt"
	"testing"
	"time"
)

// TestThrottleFullTable: an attacker who fills the table with one failure
// from each of many addresses does not win unthrottled guesses from the
// next address: once the table is full, the addresses it cannot hold share
// one limit.
func TestThrottleFullTable(t *testing.T) {
	t.Parallel()
	var th throttle
	now := time.Unix(1_800_000_000, 0)
	for i := range maxTrackers {
		th.failed(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now)
	}
	for i := range maxFails {
		th.failed(fmt.Sprintf("192.0.2.%d", i), now)
	}
	if _, blocked := th.blocked("198.51.100.7", now); !blocked {
		t.Fatal("with the table full, a fresh address guesses without limit")
	}
	if n := len(th.fails); n > maxTrackers+1 {
		t.Fatalf("the table holds %d entries; the bound is %d", n, maxTrackers)
	}
	// A minute later the table has room again and the shared limit lifts.
	later := now.Add(failWindow)
	if _, blocked := th.blocked("198.51.100.7", later); blocked {
		t.Fatal("the shared limit outlived its window")
	}
}

// TestThrottleIPv6Prefix: the addresses of one IPv6 /64 (one host or
// network, as a rule) share a limit; a host choosing a fresh address per
// guess is still throttled.
func TestThrottleIPv6Prefix(t *testing.T) {
	t.Parallel()
	var th throttle
	now := time.Unix(1_800_000_000, 0)
	for i := range maxFails {
		th.failed(clientOf(fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1)), now)
	}
	if _, blocked := th.blocked(clientOf("[2001:db8:1:2:ffff::9]:5000"), now); !blocked {
		t.Fatal("another address in the same /64 is not throttled")
	}
	if _, blocked := th.blocked(clientOf("[2001:db8:1:3::1]:5000"), now); blocked {
		t.Fatal("another /64 is throttled")
	}
	if _, blocked := th.blocked(clientOf("127.0.0.1:5000"), now); blocked {
		t.Fatal("an IPv4 address is throttled")
	}
}
