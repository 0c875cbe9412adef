#!/usr/bin/env bash
# Runs every check a change must pass: formatting, vet, the race-enabled
# test suite (including end-to-end tests with containerd, dockerd and
# skopeo, the admin console's in a headless chromium, the scanner's on a
# private PostgreSQL) and a short run
# of every fuzz target. Installs the client programs the end-to-end tests
# drive when they are missing. Exits non-zero
# on the first failure. Meant to run as root on Debian 12 with Go.
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages whose programs the integration tests run, as "program:package".
needs=(containerd:containerd ctr:containerd dockerd:docker.io docker:docker.io skopeo:skopeo runc:runc chromium:chromium)
missing=()
for pair in "${needs[@]}"; do
	command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
# The scanner's tests start a private PostgreSQL from Debian's versioned
# directory, which is not on PATH.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "test.sh: missing ${missing[*]} and not root to install them" >&2
		exit 1
	fi
	echo "test.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# The tests start private daemons; keep the packages from starting the
	# system's own (and from failing where there is no init system).
	policy=/usr/sbin/policy-rc.d
	made_policy=
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		made_policy=1
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -qq
	# Install the whole set: a partial install can leave versions mismatched.
	apt-get install -y -qq containerd docker.io skopeo runc chromium postgresql >/dev/null
	if [[ -n $made_policy ]]; then
		rm -f "$policy"
		trap - EXIT
	fi
fi

# The object-store tests start a private versitygw (internal/s3test), a Go
# program that go install puts in GOBIN or the first GOPATH's bin, where
# the tests look for it.
gobin=$(go env GOBIN)
[[ -n $gobin ]] || gobin=$(go env GOPATH | cut -d: -f1)/bin
if ! command -v versitygw >/dev/null 2>&1 && [[ ! -x $gobin/versitygw ]]; then
	echo "test.sh: installing versitygw"
	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi

echo "== gofmt"
unformatted=$(gofmt -l .)
if [[ -n $unformatted ]]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi

echo "== go vet"
# With the flags of the container image's static build (scripts/image.sh),
# which the tests that build airlock without -race use too: vet compiles
# every dependency, and those builds then find them compiled.
CGO_ENABLED=0 go vet -trimpath ./...

echo "== go test -race"
# CI is passed through: with CI=true a missing client program fails instead
# of skipping.
CI="${CI:-}" go test -race -count=1 -timeout 30m ./...

echo "== fuzz"
# Every Fuzz function, found where it is declared, runs briefly on its own.
# The budget is a count of inputs, not a duration: with -fuzztime=<duration>
# Go 1.26's fuzzing coordinator can report its own deadline as a failure
# ("context deadline exceeded", no crasher written) when a worker is busy as
# time runs out; a count has no deadline to race.
while IFS=: read -r file _ decl; do
	name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$decl")
	pkg="./$(dirname "$file")"
	echo "-- $name in $pkg"
	go test -run='^$' -fuzz="^${name}\$" -fuzztime=30000x "$pkg"
done < <(grep -rn --include='*_test.go' '^func Fuzz' . | grep -v '^./.git/' | sort)

echo "== all checks passed"
