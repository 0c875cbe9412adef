// Package airlocktest builds the airlock binary and runs it as a real
// process for end-to-end tests: it writes the YAML configuration from a
// typed Config, picks free loopback ports, waits for /readyz, keeps every
// line airlock logs on stderr for assertions, and stops, kills and restarts
// the process on the same data directory.
//
// Guarantees: airlock only ever listens on 127.0.0.1; a started process is
// always ended (SIGTERM, then SIGKILL) by the test's cleanup; when the test
// failed, the end of airlock's log is printed with it. A binary built for a
// race-enabled test binary is itself race-enabled, and a data race reported
// by airlock fails the test that ran it.
package airlocktest
