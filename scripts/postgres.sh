#!/usr/bin/env bash
# Starts a private PostgreSQL for airlock's vulnerability scanner, on
# 127.0.0.1, with its data in DIR (default ./airlock-pg), and writes the
# connection string to DIR/dsn for scanner.databaseFile. Installs Debian's
# postgresql when it is missing (as root). Run it again to start the same
# cluster after a reboot; `bash scripts/postgres.sh --stop [DIR]` stops it.
#
#   bash scripts/postgres.sh            # then, in airlock.yaml:
#   scanner:
#     databaseFile: ./airlock-pg/dsn
set -euo pipefail

stop=
if [[ ${1:-} == --stop ]]; then
	stop=1
	shift
fi
dir=$(realpath -m "${1:-./airlock-pg}")
port=${PGPORT:-5433}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [[ -z $bin ]]; then
	if [[ $(id -u) -ne 0 ]]; then
		echo "postgres.sh: PostgreSQL is not installed and this is not root; install Debian's postgresql" >&2
		exit 1
	fi
	echo "postgres.sh: installing postgresql"
	export DEBIAN_FRONTEND=noninteractive
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		# Keep the package from starting the system's own cluster.
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update -qq
	apt-get install -y -qq postgresql >/dev/null
	bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

# PostgreSQL refuses to run as root: as root, the cluster belongs to the
# postgres user the package creates.
as=()
if [[ $(id -u) -eq 0 ]]; then
	as=(runuser -u postgres --)
fi

if [[ -n $stop ]]; then
	"${as[@]}" "$bin/pg_ctl" -D "$dir/data" stop -m fast
	exit 0
fi

mkdir -p "$dir"
if [[ $(id -u) -eq 0 ]]; then
	chown postgres: "$dir"
fi
if [[ ! -f $dir/data/PG_VERSION ]]; then
	password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
	pwfile=$(mktemp)
	printf '%s\n' "$password" >"$pwfile"
	chmod 644 "$pwfile"
	"${as[@]}" "$bin/initdb" -D "$dir/data" -U airlock --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 >/dev/null
	rm -f "$pwfile"
	printf 'postgres://airlock:%s@127.0.0.1:%s/airlock?sslmode=disable\n' "$password" "$port" >"$dir/dsn"
	chmod 600 "$dir/dsn"
fi
if ! "${as[@]}" "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
	"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w \
		-o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir/data" start >/dev/null
fi
dsn=$(cat "$dir/dsn")
PGPASSWORD=$(sed -E 's|^postgres://airlock:([^@]*)@.*|\1|' <<<"$dsn") \
	"$bin/psql" -h 127.0.0.1 -p "$port" -U airlock -d postgres -tAc \
	"SELECT 1 FROM pg_database WHERE datname = 'airlock'" | grep -q 1 ||
	PGPASSWORD=$(sed -E 's|^postgres://airlock:([^@]*)@.*|\1|' <<<"$dsn") \
		"$bin/psql" -h 127.0.0.1 -p "$port" -U airlock -d postgres -qc "CREATE DATABASE airlock"
echo "PostgreSQL for airlock is running on 127.0.0.1:$port (data in $dir/data)."
echo "Set scanner.databaseFile: $dir/dsn in airlock.yaml."
