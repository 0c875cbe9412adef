.PHONY: build test

# build compiles the airlock binary into ./airlock.
build:
	go build -o airlock ./cmd/airlock

# test runs every check CI runs: gofmt, vet, race tests, end-to-end tests, fuzz.
test:
	bash scripts/test.sh
