#!/bin/sh
# The official image's contract, in short: on first start (an empty PGDATA) create the cluster with
# POSTGRES_USER / POSTGRES_PASSWORD and the database POSTGRES_DB, then run the *.sql files of
# /docker-entrypoint-initdb.d in name order with psql (a server on the local socket only, stopped
# again), so the real server comes up once, initialised.
set -eu
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    user=${POSTGRES_USER:-postgres}
    database=${POSTGRES_DB:-$user}
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}" > "$pwfile"
    initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        echo "CREATE DATABASE \"$database\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    scripts=$(ls /docker-entrypoint-initdb.d/*.sql 2>/dev/null | sort || true)
    if [ -n "$scripts" ]; then
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        for script in $scripts; do
            echo "docker-entrypoint.sh: running $script"
            psql -v ON_ERROR_STOP=1 -q -U "$user" -d "$database" -f "$script"
        done
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
fi
exec "$@"
