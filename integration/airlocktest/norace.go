//go:build !race

package airlocktest

const raceEnabled = false
