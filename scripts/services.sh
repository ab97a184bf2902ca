#!/usr/bin/env bash
# Make the services the integration tests talk to available on this machine:
#   PostgreSQL 127.0.0.1:5432 (trust auth, database spotex_test), Redis 127.0.0.1:6379,
#   RabbitMQ 127.0.0.1:5672 (guest/guest).
# For each one: if it answers, nothing is done; if its Debian package is missing, it is installed
# (one `apt-get update` at most); if it is installed but down, it is started with the machine's own
# start command; then we wait, bounded, until it answers. Idempotent, and takes well under a second
# when everything is already up.
#
# Environment: SPOTEX_SERVICES_TIMEOUT  seconds to wait for each service (default 120).
set -euo pipefail

TIMEOUT="${SPOTEX_SERVICES_TIMEOUT:-120}"
TEST_DB="spotex_test"

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root to run: $*"
    fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq
        apt_updated=1
    fi
    log "installing $* from Debian's packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# wait_for NAME CHECK-COMMAND...: poll until the check succeeds or TIMEOUT seconds pass.
wait_for() {
    local name=$1; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "$name did not answer within ${TIMEOUT}s (check: $*); see its log"
        fi
        sleep 0.5
    done
    log "$name is up"
}

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# --- PostgreSQL --------------------------------------------------------------------------------

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
pg_psql() { psql -h 127.0.0.1 -p 5432 -U postgres -w -X -q -v ON_ERROR_STOP=1 "$@"; }

pg_clusters() { ls /etc/postgresql 2>/dev/null || true; }

pg_trust_localhost() {
    # pg_hba is first-match: put trust rules for loopback TCP before the distribution's defaults.
    local version hba changed=0
    for version in $(pg_clusters); do
        hba="/etc/postgresql/$version/main/pg_hba.conf"
        [ -f "$hba" ] || continue
        if ! grep -Eq '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
            log "configuring trust auth for 127.0.0.1 in $hba"
            as_root sed -i '0,/^[[:space:]]*\(local\|host\)/s//# spotex: loopback trusts (scripts\/services.sh)\nhost all all 127.0.0.1\/32 trust\nhost all all ::1\/128 trust\n&/' "$hba"
            changed=1
        fi
    done
    if [ "$changed" = 1 ]; then
        for version in $(pg_clusters); do
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
        done
    fi
}

ensure_postgres() {
    if ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
        apt_install postgresql-client
    fi
    if ! pg_up; then
        if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(pg_clusters)" ]; then
            apt_install postgresql
        fi
        local version
        for version in $(pg_clusters); do
            log "starting PostgreSQL $version"
            as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        done
        wait_for PostgreSQL pg_up
    fi
    if ! pg_psql -c 'select 1' >/dev/null 2>&1; then
        pg_trust_localhost
        wait_for "PostgreSQL (as postgres, trust auth)" pg_psql -c 'select 1'
    fi
    if [ -z "$(pg_psql -Atc "select 1 from pg_database where datname = '$TEST_DB'")" ]; then
        log "creating database $TEST_DB"
        # Two runs at once may race here: losing the race is fine as long as the database exists.
        pg_psql -c "create database $TEST_DB" >/dev/null 2>&1 || true
        [ -n "$(pg_psql -Atc "select 1 from pg_database where datname = '$TEST_DB'")" ] \
            || die "could not create database $TEST_DB"
    fi
}

# --- Redis -------------------------------------------------------------------------------------

redis_up() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
    else  # the same PING, spoken by hand
        timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6379 && printf "PING\r\n" >&3 && read -r l <&3 &&
            [[ $l == +PONG* ]]' 2>/dev/null
    fi
}

ensure_redis() {
    redis_up && return 0
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server
        redis_up && return 0  # the package's own start script may have started it
    fi
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis_up
}

# --- RabbitMQ ----------------------------------------------------------------------------------

rabbit_up() { tcp_open 127.0.0.1 5672; }
rabbit_ready() { as_root rabbitmq-diagnostics -q ping && rabbit_up; }

ensure_rabbitmq() {
    rabbit_up && return 0
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        apt_install rabbitmq-server
    fi
    # A node that is booting answers the diagnostics ping before its AMQP listener opens: only
    # start one when no node answers at all, or we would start a second one.
    if ! as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        log "starting RabbitMQ"
        as_root rabbitmq-server -detached
    else
        log "RabbitMQ node is running, waiting for its AMQP listener"
    fi
    wait_for RabbitMQ rabbit_ready
}

ensure_postgres
ensure_redis
ensure_rabbitmq
