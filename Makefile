.PHONY: build test bench image

# build compiles the airlock binary into ./airlock.
build:
	go build -o airlock ./cmd/airlock

# test runs every check CI runs: gofmt, vet, race tests, end-to-end tests, fuzz.
test:
	bash scripts/test.sh

# bench runs the side-by-side benchmark and rewrites docs/benchmarks.md.
bench:
	go run ./integration/bench

# image builds the container image airlock:dev (scripts/image.sh; no base
# image or network needed).
image:
	bash scripts/image.sh
