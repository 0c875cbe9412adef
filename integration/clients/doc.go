// Package clients runs the container clients that airlock must serve —
// containerd (driven through ctr), dockerd (driven through the docker CLI)
// and skopeo — as real processes from their Debian packages, each with its
// own temporary root, state and socket so tests never touch the machine's
// own daemons.
//
// Guarantees:
//   - Every process a Start function begins is stopped, and its directories
//     removed, by the test's cleanup.
//   - Client processes run with a proxy environment that sends any
//     non-loopback traffic to a closed loopback port, so a fallback to a
//     public registry (dockerd and skopeo fall back from a failed mirror)
//     fails at once instead of leaving the machine.
//   - A missing program or a missing root privilege fails the test when CI
//     is "true" and skips it, naming the Debian package to install,
//     otherwise.
package clients
