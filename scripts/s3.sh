#!/usr/bin/env bash
# Starts a private S3 server (versitygw with its posix backend) for
# airlock's blobs, on 127.0.0.1, with its data in DIR (default
# ./airlock-s3) and a bucket named airlock, and prints the storage section
# of airlock.yaml that uses it. The root account's keys are made on first
# run and kept in DIR/credentials. Installs versitygw with go install when
# it is missing. Run it again to start the same server after a reboot;
# `bash scripts/s3.sh --stop [DIR]` stops it.
#
# For trying shared blobs on one machine; in production use the object
# store you run, with a lifecycle rule that aborts incomplete multipart
# uploads (a commit cut short by a crash leaves one).
#
#   bash scripts/s3.sh            # S3PORT=7070 by default
set -euo pipefail

stop=
if [[ ${1:-} == --stop ]]; then
	stop=1
	shift
fi
dir=$(realpath -m "${1:-./airlock-s3}")
port=${S3PORT:-7070}

if [[ -n $stop ]]; then
	if [[ -f $dir/pid ]] && kill "$(cat "$dir/pid")" 2>/dev/null; then
		rm -f "$dir/pid"
		echo "S3 server stopped."
	else
		echo "s3.sh: no S3 server of $dir is running" >&2
	fi
	exit 0
fi

bin=$(command -v versitygw || true)
if [[ -z $bin ]]; then
	gobin=$(go env GOBIN)
	[[ -n $gobin ]] || gobin=$(go env GOPATH | cut -d: -f1)/bin
	if [[ ! -x $gobin/versitygw ]]; then
		echo "s3.sh: installing versitygw"
		go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
	fi
	bin=$gobin/versitygw
fi

# The posix backend keeps each bucket as a directory of the root.
mkdir -p "$dir/root/airlock"
if [[ ! -f $dir/credentials ]]; then
	(
		umask 077
		printf 'ROOT_ACCESS_KEY=airlock\nROOT_SECRET_KEY=%s\n' "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" >"$dir/credentials"
	)
fi
# shellcheck source=/dev/null
source "$dir/credentials"

if [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
	echo "The S3 server of $dir is already running."
else
	ROOT_ACCESS_KEY=$ROOT_ACCESS_KEY ROOT_SECRET_KEY=$ROOT_SECRET_KEY \
		nohup "$bin" --port "127.0.0.1:$port" --quiet posix "$dir/root" >"$dir/log" 2>&1 &
	echo $! >"$dir/pid"
	for _ in $(seq 100); do
		if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			break
		fi
		if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
			echo "s3.sh: versitygw exited:" >&2
			cat "$dir/log" >&2
			exit 1
		fi
		sleep 0.1
	done
fi
cat <<EOF
S3 for airlock is running on 127.0.0.1:$port (data in $dir/root, bucket airlock).
In airlock.yaml:
storage:
  driver: s3
  parameters:
    bucket: airlock
    region: us-east-1
    regionendpoint: "http://127.0.0.1:$port"
    forcepathstyle: true
    accesskey: $ROOT_ACCESS_KEY
    secretkey: $ROOT_SECRET_KEY
EOF
