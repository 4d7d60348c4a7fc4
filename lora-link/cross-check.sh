#!/usr/bin/env bash
# Cross-builds lora-link and gateway with the real SX127x backend (feature `rpi`) for a Raspberry Pi
# running 64-bit Linux. Installs what is missing: the aarch64 GNU toolchain (apt) and the
# Rust target (rustup). Usage: lora-link/cross-check.sh [--check] [extra cargo args]
# --check: `cargo check` instead of `cargo build` (what scripts/test.sh runs): the rpi backend
# is type-checked for aarch64 and the build scripts run with the aarch64 C compiler, but no
# code is generated and nothing is linked (about 40 % less time from scratch here).
# Honours CARGO_TARGET_DIR. Exit code: cargo's (non-zero when the build fails).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
LINKER=aarch64-linux-gnu-gcc

if ! command -v "$LINKER" >/dev/null 2>&1; then
    echo "cross-check: installing gcc-aarch64-linux-gnu" >&2
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "cross-check: adding rust target $TARGET" >&2
    rustup target add "$TARGET"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="$LINKER"
export CC_aarch64_unknown_linux_gnu="$LINKER"
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
mode=build
if [ "${1:-}" = --check ]; then
    mode=check
    shift
fi
echo "cross-check: cargo $mode -p lora-link -p gateway --features lora-link/rpi,gateway/rpi --target $TARGET" >&2
cargo "$mode" -p lora-link -p gateway --features lora-link/rpi,gateway/rpi --target "$TARGET" "$@"
bin="${CARGO_TARGET_DIR:-target}/$TARGET/debug/lora-link"
if [ "$mode" = build ] && [ -f "$bin" ] && command -v file >/dev/null 2>&1; then
    file "$bin" >&2
fi
