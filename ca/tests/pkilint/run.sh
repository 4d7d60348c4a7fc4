#!/usr/bin/env bash
# pkilint (the linter CAs use for the Web PKI and S/MIME profiles) checks one certificate of
# every profile the provisioner issues with its RFC 5280 linter, `lint_pkix_cert`, at WARNING:
# root and issuing CA, server, client, gateway, receiver, device and manifest signer. The
# certificates come from provisioner/tests/pkilint.rs, which issues them in fresh homes and
# asserts zero findings.
# pkilint is installed (pinned) in a venv on first use and reused after; the venv lives in the
# user's cache (named by the version and the Python it runs on), so a fresh clone does not
# install it again (about 25 s here); PKILINT_VENV=DIR puts it elsewhere.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
PKILINT_VERSION=0.13.3
py="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="${PKILINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/iot-provisioner/pkilint-$PKILINT_VERSION-py$py}"

if [ ! -f "$venv/.pkilint-$PKILINT_VERSION" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "pkilint==$PKILINT_VERSION"
    touch "$venv/.pkilint-$PKILINT_VERSION"
fi
cd "$repo"
PKILINT="$venv/bin/lint_pkix_cert" \
    cargo test -q -p provisioner --test pkilint -- --ignored --nocapture
