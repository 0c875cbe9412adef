// Package freeport hands out free loopback TCP ports to tests and the
// benchmark, which start servers as child processes and must write the
// port into their configuration before the child binds it.
//
// Asking the kernel for port 0 and closing the listener leaves a window in
// which the same port can be handed out again: Linux reuses a just-closed
// port readily, and a test that picks a registry, an admin and a peer port
// in a row then gives one process the same port twice. This package keeps
// every port it has handed out in this process and never returns one twice,
// so ports picked here are distinct from each other. Another process can
// still take a port before the child binds it; the child then fails to
// become ready, loudly.
package freeport

import (
	"fmt"
	"net"
	"strconv"
	"sync"
)

// handedOut is process-wide on purpose: the ports it guards are a
// process-wide resource, and every caller in the process must see the
// others' picks for the guarantee to hold.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: make(map[int]bool)}

// attempts bounds how often Port asks the kernel again when it answers
// with a port already handed out.
const attempts = 100

// Port returns a loopback port that was free when asked and that no other
// call in this process has returned.
func Port() (int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	for range attempts {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find a free loopback port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("find a free loopback port: the kernel answered %d times with ports already handed out", attempts)
}

// Addr is Port as "127.0.0.1:port".
func Addr() (string, error) {
	port, err := Port()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}
