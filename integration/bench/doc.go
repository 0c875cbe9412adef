// Command bench measures airlock beside the alternatives a user would
// otherwise run, on loopback, in one run, and writes the results as a
// Markdown table to docs/benchmarks.md.
//
// Run it from the module root:
//
//	go run ./integration/bench            # defaults fit a 2-core machine in under 5 minutes
//	go run ./integration/bench -h         # sizes, rounds, upstream bandwidth, output file
//
// One run starts, all on 127.0.0.1:
//
//   - an origin registry that serves seeded images from files, counts every
//     request and the bytes it sends, and can throttle each response to a
//     bandwidth, as a distant registry would;
//   - airlock as its own process (built from ./cmd/airlock), so its CPU time
//     and resident memory can be read from /proc/<pid>; the origin is its
//     default upstream, and, on a second port, upstream "pinned", which a
//     pin policy governs (scenario 11; no other scenario pulls through it);
//     signature policies (a key, a keyless identity with a trusted root, a
//     Notation trust store, all written under the run's directory) govern
//     its repositories bench/sig-*/ (scenario 12);
//   - for scenario 13 only, a second airlock with its vulnerability
//     scanner on, on a PostgreSQL started for the run as the tests start
//     one (internal/pgtest: Debian's postgresql, in a temporary directory,
//     on loopback), its data loaded with `airlock vulndb import`, its
//     images built by scanner/scannertest; without PostgreSQL that
//     scenario reports itself not run;
//   - distribution/v3 in proxy mode, in-process, on its own listener, with
//     filesystem storage, pointed at the same origin;
//   - a bare http.ServeContent of an *os.File with the blob's bytes, as its
//     own process: the ceiling no registry can beat on this machine.
//
// Direct pulls go to the origin itself. Timed rounds are interleaved across
// contenders (A B C A B C ...) so that drift of the machine spreads evenly,
// and the median of the rounds is reported. Every goal is judged from the
// measured numbers; a missed goal is printed as missed.
//
// Guarantees: nothing listens on or connects to anything but loopback; all
// data lives under one temporary directory that is removed at exit; child
// processes are stopped before the command returns.
package main
