#!/usr/bin/env bash
# Unpacks the source distribution of the cryptoauthlib release the conformance test pins
# (setup-venv.sh), for its C headers: the emitted certificate definitions are compiled
# against them. Idempotent; prints the unpacked directory, kept in the user's cache beside the
# venv (CRYPTOAUTHLIB_SDIST=DIR puts it elsewhere).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
CAL_VERSION="$(sed -n 's/^CAL_VERSION=//p' "$here/setup-venv.sh")"
sdist="${CRYPTOAUTHLIB_SDIST:-${XDG_CACHE_HOME:-$HOME/.cache}/iot-provisioner/cryptoauthlib-$CAL_VERSION-sdist}"
dir="$sdist/cryptoauthlib-$CAL_VERSION"
if [ ! -f "$dir/lib/atcacert/atcacert_def.h" ]; then
    mkdir -p "$sdist"
    python3 -m pip download --quiet --no-binary :all: --no-deps \
        "cryptoauthlib==$CAL_VERSION" -d "$sdist"
    tar -C "$sdist" -xzf "$sdist/cryptoauthlib-$CAL_VERSION.tar.gz"
fi
echo "$dir"
