#!/usr/bin/env bash
# Installs what `make bench` needs beyond the test suite: Debian's redis-server (Celery's
# broker in bench/dispatch.py; the bench starts and stops its own server on a free port).
# Idempotent; not root and missing: says what to install and exits 1.
set -euo pipefail

PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-bench-deps: redis-server is missing; install it as root:" \
        "sudo apt-get install -y redis-server (the Celery arm of the bench is skipped without it)" >&2
    exit 1
fi
echo "install-bench-deps: installing redis-server"
export DEBIAN_FRONTEND=noninteractive
apt_options=(-q -y -o DPkg::Lock::Timeout=600)
apt-get "${apt_options[@]}" update
apt-get "${apt_options[@]}" install --no-install-recommends redis-server
# Debian's package starts a service of its own where an init system runs: the bench needs none
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
