#!/usr/bin/env bash
# Builds the firmware core for a bare-metal target to keep it honest about `no_std`.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -qx riscv32imc-unknown-none-elf || rustup target add riscv32imc-unknown-none-elf
cargo build -p firmware --no-default-features --target riscv32imc-unknown-none-elf
