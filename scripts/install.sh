#!/usr/bin/env bash
# Install what thingward needs into ./.venv; with --test also the test extras and the Debian peers the
# tests talk to (mosquitto clients, SoftHSM2, a PostgreSQL server the tests start themselves, and the
# scanner lab: busybox-static, openssh-server, nmap, iproute2). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

if [ "$want_test" = 1 ]; then
    debs=(mosquitto mosquitto-clients softhsm2 opensc postgresql busybox-static openssh-server openssh-client nmap iproute2 openssl chromium)
    missing=()
    for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" = 0 ]; then
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        else
            echo "install these Debian packages first (as root): ${missing[*]}" >&2
            exit 1
        fi
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$want_test" = 1 ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
else
    .venv/bin/python -m pip install -q -e .
fi
