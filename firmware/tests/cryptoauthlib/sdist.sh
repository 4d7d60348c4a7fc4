#!/usr/bin/env bash
# Unpacks the source distribution of the cryptoauthlib release the conformance test pins
# (setup-venv.sh), for its C headers: the emitted certificate definitions are compiled
# against them. Idempotent; prints the unpacked directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
venv="${CRYPTOAUTHLIB_VENV:-$repo/target-venv}"
CAL_VERSION="$(sed -n 's/^CAL_VERSION=//p' "$here/setup-venv.sh")"
dir="$venv/sdist/cryptoauthlib-$CAL_VERSION"
if [ ! -f "$dir/lib/atcacert/atcacert_def.h" ]; then
    mkdir -p "$venv/sdist"
    python3 -m pip download --quiet --no-binary :all: --no-deps \
        "cryptoauthlib==$CAL_VERSION" -d "$venv/sdist"
    tar -C "$venv/sdist" -xzf "$venv/sdist/cryptoauthlib-$CAL_VERSION.tar.gz"
fi
echo "$dir"
