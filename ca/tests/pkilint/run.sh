#!/usr/bin/env bash
# pkilint (the linter CAs use for the Web PKI and S/MIME profiles) checks one certificate of
# every profile the provisioner issues with its RFC 5280 linter, `lint_pkix_cert`, at WARNING:
# root and issuing CA, server, client, gateway, receiver, device and manifest signer. The
# certificates come from provisioner/tests/pkilint.rs, which issues them in fresh homes and
# asserts zero findings.
# pkilint is installed (pinned) in a venv on first use and reused after.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="${PKILINT_VENV:-$target/pkilint-venv}"
PKILINT_VERSION=0.13.3

if [ ! -f "$venv/.pkilint-$PKILINT_VERSION" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "pkilint==$PKILINT_VERSION"
    touch "$venv/.pkilint-$PKILINT_VERSION"
fi
cd "$repo"
PKILINT="$venv/bin/lint_pkix_cert" \
    cargo test -q -p provisioner --test pkilint -- --ignored --nocapture
