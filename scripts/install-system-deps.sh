#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, when they are missing.
# Idempotent: when everything is present it only checks and exits (in milliseconds).
# Not root and something missing: says what to install and exits 1.
set -euo pipefail

# "package:command" - the package is present when its command is found or dpkg has it.
REQUIRED=(
    "postgresql-15:/usr/lib/postgresql/15/bin/postgres"
    "mariadb-server:mariadbd"
    "bubblewrap:bwrap"
    "ffmpeg:ffmpeg"
    "chromium:chromium"
    "chromium-driver:chromedriver"
)

is_present() {
    local package=$1 command=$2
    PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$command" >/dev/null 2>&1 && return 0
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for entry in "${REQUIRED[@]}"; do
    package=${entry%%:*}
    command=${entry#*:}
    is_present "$package" "$command" || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: missing Debian packages: ${missing[*]}" >&2
    echo "  install them as root:  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: missing packages ${missing[*]}, and there is no apt-get here;" \
        "install their equivalents with this system's package manager" >&2
    exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt/dpkg run to finish instead of failing on its lock.
apt_options=(-q -y -o DPkg::Lock::Timeout=600)
apt-get "${apt_options[@]}" update
apt-get "${apt_options[@]}" install --no-install-recommends "${missing[@]}"
