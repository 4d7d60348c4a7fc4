#!/usr/bin/env bash
# Installs Microchip's Python cryptoauthlib (pinned), cmake (to build its C library from the
# sdist: there is no Linux wheel) and `cryptography` (independent signature checks) into a
# virtual environment, and compiles the LD_PRELOAD shim that lets the kit UART HAL's DTR ioctl
# succeed on a pseudo-terminal. Idempotent: a finished venv is reused.
# The venv lives in the user's cache (named by the pinned version and the Python it runs on),
# not in the checkout, so a fresh clone does not build it again (about 40 s here);
# CRYPTOAUTHLIB_VENV=DIR puts it elsewhere.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# Pinned: 20250916 is the sdist known to configure and build with these flags.
CAL_VERSION=20250916
py="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="${CRYPTOAUTHLIB_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/iot-provisioner/cryptoauthlib-$CAL_VERSION-py$py}"

if [ ! -f "$venv/.cryptoauthlib-$CAL_VERSION" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip wheel setuptools
    "$venv/bin/pip" install --quiet 'cmake>=3.20,<4' 'cryptography>=41'
    PATH="$venv/bin:$PATH" CRYPTOAUTHLIB_NOUSB=1 \
        "$venv/bin/pip" install --no-build-isolation --no-binary cryptoauthlib "cryptoauthlib==$CAL_VERSION"
    touch "$venv/.cryptoauthlib-$CAL_VERSION"
fi
mkdir -p "$venv/shim"
if [ ! -f "$venv/shim/dtr_shim.so" ] || [ "$here/dtr_shim.c" -nt "$venv/shim/dtr_shim.so" ]; then
    gcc -shared -fPIC -O2 -o "$venv/shim/dtr_shim.so" "$here/dtr_shim.c" -ldl
fi
echo "$venv"
