#!/usr/bin/env bash
# The whole test suite: formatting, lints, every crate's tests against real programs
# (mosquitto, openssl, pseudo-terminals, the emulated chip and radio), the no_std build of the
# firmware core and the aarch64 cross-check of the LoRa link (`cargo check`: the rpi backend
# type-checked for the Pi, build scripts run with the aarch64 C compiler; `cross-check.sh`
# without --check builds and links).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages mosquitto mosquitto-clients openssl postgresql gcc-aarch64-linux-gnu libc6-dev-arm64-cross python3-venv softhsm2 opensc

# Each phase prints its time, and the table of all of them ends the log (also after a failure),
# so a CI log shows where the suite's time goes.
TIMES=()
SUITE_START=$SECONDS
CURRENT=""
times_table() {
    echo "== phase times (s)"
    for t in "${TIMES[@]}"; do echo "$t"; done
    [ -z "$CURRENT" ] || printf '%6d  %s (FAILED)\n' $((SECONDS - CURRENT_START)) "$CURRENT"
    printf '%6d  total\n' $((SECONDS - SUITE_START))
}
trap times_table EXIT
phase() {
    local name=$1 start=$SECONDS
    shift
    CURRENT=$name CURRENT_START=$start
    echo "== $name"
    "$@"
    CURRENT=""
    TIMES+=("$(printf '%6d  %s' $((SECONDS - start)) "$name")")
    echo "== $name: $((SECONDS - start)) s"
}

phase "fmt" cargo fmt --all -- --check
phase "clippy" cargo clippy --workspace --all-targets -- -D warnings
# Built first on its own so that the log tells the build of the tests from their run.
phase "tests: build" cargo test --workspace --no-run
phase "tests: run" cargo test --workspace
phase "no_std firmware core" firmware/nostd-check.sh
phase "aarch64 cross-check (type-checked, not linked)" lora-link/cross-check.sh --check
if [ -x firmware/tests/cryptoauthlib/run.sh ]; then
    phase "Microchip cryptoauthlib against the emulated chip" firmware/tests/cryptoauthlib/run.sh
fi
phase "pkilint (RFC 5280 linter) on one certificate of every profile" ca/tests/pkilint/run.sh
echo "== all tests passed"
