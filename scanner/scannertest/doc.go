// Package scannertest makes what airlock's vulnerability scanner reads,
// for tests and benchmarks outside package scanner: container images
// whose layers hold real package databases, and vulnerability data in
// claircore's updater-export format.
//
// The images are real to claircore: a Debian layer holds /etc/os-release,
// the dpkg status database (/var/lib/dpkg/status) and each package's file
// list (/var/lib/dpkg/info/<name>.list), the files claircore's dpkg
// scanner and os-release detector read; an Alpine layer holds its
// os-release and the apk database (/lib/apk/db/installed). Layers are
// built byte for byte the same from the same files (fixed modification
// times, sorted entries), so two images made of the same files share
// their layer's digest, as two images built on one base do.
//
// The data is written with claircore's own encoder (libvuln/jsonblob),
// the format `clairctl export-updaters` writes and `airlock vulndb
// import` loads. Vulnerabilities are made as claircore's debian and
// alpine updaters make them, so claircore's matchers match them against
// the images' packages as they would real data.
//
// Every function that can fail takes a testing.TB and fails it: these are
// fixtures, not library code.
package scannertest
