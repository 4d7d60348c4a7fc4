#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests against real programs
# (mosquitto, openssl, pseudo-terminals, the emulated chip and radio), the no_std build of the
# firmware core and the aarch64 cross-build of the LoRa link.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages mosquitto mosquitto-clients openssl postgresql gcc-aarch64-linux-gnu libc6-dev-arm64-cross python3-venv softhsm2 opensc

echo "== fmt"; cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"; cargo test --workspace
echo "== no_std firmware core"; firmware/nostd-check.sh
echo "== aarch64 cross-build"; lora-link/cross-check.sh
if [ -x firmware/tests/cryptoauthlib/run.sh ]; then
    echo "== Microchip cryptoauthlib against the emulated chip"; firmware/tests/cryptoauthlib/run.sh
fi
echo "== pkilint (RFC 5280 linter) on one certificate of every profile"; ca/tests/pkilint/run.sh
echo "== all tests passed"
