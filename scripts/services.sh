#!/usr/bin/env bash
# Installs (once) and starts (every time) what Stagely's tests and demo need
# on a Debian 12 machine: Postgres 15, Redis 7 (the Valkey-compatible
# server), the Docker engine, the docker compose v2 plugin, Pebble and
# staticcheck. Safe to run again: every step checks before it acts.
set -euo pipefail

COMPOSE_VERSION=v2.29.7
PEBBLE_VERSION=v2.10.3
STATICCHECK_VERSION=v0.7.0
GOBIN_DIR=$(go env GOPATH)/bin

log() { printf '==> %s\n' "$*" >&2; }

apt_updated=
apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ -z "$apt_updated" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		apt_updated=1
	fi
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

wait_for() { # wait_for NAME SECONDS CMD...
	local name=$1 secs=$2; shift 2
	for _ in $(seq 1 $((secs * 5))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "$name did not come up within ${secs}s" >&2
	return 1
}

# --- Postgres --------------------------------------------------------------
apt_install postgresql-15 postgresql-client-15
if ! pg_lsclusters -h | awk '$1=="15" && $2=="main"' | grep -q online; then
	log "starting postgres"
	pg_ctlcluster 15 main start
fi
wait_for postgres 30 pg_isready -h 127.0.0.1 -p 5432
# Enough connections for parallel test packages and the intake benchmark.
if [ "$(su postgres -c "psql -tAc 'show max_connections'")" -lt 300 ]; then
	su postgres -c "psql -qc 'alter system set max_connections = 300'"
	pg_ctlcluster 15 main restart
	wait_for postgres 30 pg_isready -h 127.0.0.1 -p 5432
fi
su postgres -c "psql -tAc \"select 1 from pg_roles where rolname='stagely'\"" | grep -q 1 ||
	su postgres -c "psql -qc \"create role stagely login createdb password 'stagely'\""
su postgres -c "psql -tAc \"select 1 from pg_database where datname='stagely'\"" | grep -q 1 ||
	su postgres -c "psql -qc 'create database stagely owner stagely'"

# --- Redis (Valkey-compatible) ----------------------------------------------
apt_install redis-server
if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
	log "starting redis"
	redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no
fi
wait_for redis 15 sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'

# --- Docker engine ----------------------------------------------------------
apt_install docker.io
if ! docker info >/dev/null 2>&1; then
	# A dockerd that died (killed, the machine restarted) leaves its pid
	# file, and a new one refuses to start while it is there.
	if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
		rm -f /var/run/docker.pid
	fi
	log "starting dockerd"
	nohup dockerd >>/var/log/stagely-dockerd.log 2>&1 &
fi
wait_for dockerd 60 docker info

# --- docker compose v2 plugin (built from source: about two minutes) --------
plugin=${HOME}/.docker/cli-plugins/docker-compose
if ! docker compose version 2>/dev/null | grep -q "${COMPOSE_VERSION#v}"; then
	if [ ! -x "$GOBIN_DIR/compose-$COMPOSE_VERSION" ]; then
		log "building docker compose $COMPOSE_VERSION"
		tmp=$(mktemp -d)
		GOBIN=$tmp go install "github.com/docker/compose/v2/cmd@$COMPOSE_VERSION"
		mkdir -p "$GOBIN_DIR"
		mv "$tmp/cmd" "$GOBIN_DIR/compose-$COMPOSE_VERSION"
		rm -rf "$tmp"
	fi
	mkdir -p "$(dirname "$plugin")"
	cp "$GOBIN_DIR/compose-$COMPOSE_VERSION" "$plugin"
fi
docker compose version >/dev/null

# --- Pebble (ACME test server) and staticcheck ------------------------------
[ -x "$GOBIN_DIR/pebble" ] || { log "building pebble"; go install "github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION"; }
[ -x "$GOBIN_DIR/pebble-challtestsrv" ] || { log "building pebble-challtestsrv"; go install "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@$PEBBLE_VERSION"; }
[ -x "$GOBIN_DIR/staticcheck" ] || { log "building staticcheck"; go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"; }

log "services ready"
