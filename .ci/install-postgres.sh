#!/usr/bin/env bash
# Make PostgreSQL's server programs available for the HA store's tests.
#
# Idempotent, run as root on Debian: installs Debian's `postgresql` when its
# initdb is missing. The packaged cluster service is not used (the tests start
# throwaway instances of their own as an unprivileged user, see
# orch/dev/postgres.py), so it is stopped if the install started it.
set -euo pipefail

say() { echo "install-postgres: $*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    say "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        for conf in /etc/postgresql/*/*; do
            [ -d "$conf" ] || continue
            ver=$(basename "$(dirname "$conf")"); name=$(basename "$conf")
            pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
        done
    fi
fi
say "$(ls -d /usr/lib/postgresql/*/bin | head -1): $(/usr/lib/postgresql/*/bin/postgres --version | head -1)"
