//go:build race

package airlocktest

// raceEnabled makes Build add -race, so end-to-end runs under `go test
// -race` also look for data races inside airlock.
const raceEnabled = true
