#!/usr/bin/env bash
# Fault campaign: RUNS bench provisioning runs (`device provision --lock`) against simulated
# boards with a noisy serial line (--line-fault-rate drawn in [0, 0.003]) and the provisioner
# killed with SIGKILL at a random moment in 3 runs out of 4, each followed by a re-run; every
# end state is classified as succeeded / stopped cleanly / inconsistent by reading the chip
# (emulator) and the ledger. Prints the counts, writes target/fault-campaign-TRANSPORT.json, and exits
# non-zero if any run ended inconsistent. Harness: provisioner/examples/fault_campaign.rs.
# Usage: scripts/fault-campaign.sh [RUNS] [kit|mos] [-- extra harness options, e.g. --seed N --jobs 2]
# (the transport: the provisioning firmware's kit protocol, the default, or Mongoose OS RPC).
# A campaign can be made in parts: the same --seed, and --first N for the number of the first
# run (0 by default), e.g. `200 mos -- --seed S` as `60 mos -- --seed S --json A.json` then
# `140 mos -- --seed S --first 60 --json B.json`; each part writes its own report.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
shift || true
transport=kit
case "${1:-}" in
    kit | mos) transport=$1; shift ;;
esac
[ "${1:-}" = "--" ] && shift
target="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target"
cargo build --release -q -p provisioner --bin provisioner --example fault_campaign
exec "$target/release/examples/fault_campaign" --bin "$target/release/provisioner" \
    --runs "$runs" --transport "$transport" --json "$target/fault-campaign-$transport.json" "$@"
