#!/usr/bin/env bash
# The main job, no hardware needed: `provisioner demo` runs the whole network on this machine.
# A CA and the broker's certificate; six simulated ESP8266 + ATECC508A boards provisioned in
# parallel over their pseudo-terminals; mosquitto (mutual TLS, ACL, CRL) on "Pi #1"; the
# gateway forwarding over the simulated LoRa air to `lora-link rx`, which republishes to a
# second mosquitto on "Pi #2"; a live view of the far side, intrusions that are refused, and a
# summary. Extra arguments go to the demo, e.g. ./scripts/main.sh --sensors 50 --json
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages mosquitto mosquitto-clients openssl

# The dev profile is tuned for a short first build (root Cargo.toml: dependencies at
# opt-level 1, no debug info for them, proc macros unoptimised); the crypto runs as fast as in
# a release build here, which would take several times longer to compile.
echo "building provisioner, gateway and lora-link (the first build takes a minute or two)..." >&2
cargo build -p provisioner -p gateway -p lora-link
P="${CARGO_TARGET_DIR:-$PWD/target}/debug/provisioner"
# The demo creates and removes its own temporary home; it stops every process it started,
# also on Ctrl-C. Its exit status is 0 when every QoS 1/2 reading reached the far side and
# every intrusion was refused.
exec "$P" demo "$@"
