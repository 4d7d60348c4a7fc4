#!/usr/bin/env bash
# cryptoauthlib (Microchip's host library, kit UART HAL) drives the emulated ATECC508A
# through sensor-sim's serial bridge on a pseudo-terminal. Installs its venv on first use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
venv="$("$here/setup-venv.sh" | tail -1)"
target="${CARGO_TARGET_DIR:-$repo/target}"
(cd "$repo" && cargo build -q -p firmware --features sim --bin sensor-sim)
sim="$target/debug/sensor-sim"

# cryptoauthlib copies the port path into a short fixed buffer: keep it short.
work="$(mktemp -d /tmp/calXXXX)"
sim_pid=""
cleanup() {
    if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; wait "$sim_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
"$sim" --link "$work/tty" --state "$work/chip.state" --timing typ 2>"$work/sim.log" &
sim_pid=$!
for _ in $(seq 100); do [ -L "$work/tty" ] && break; sleep 0.05; done
[ -L "$work/tty" ] || { cat "$work/sim.log"; echo "sensor-sim did not create its port"; exit 1; }

status=0
LD_PRELOAD="$venv/shim/dtr_shim.so" "$venv/bin/python" "$here/test_kit.py" "$work/tty" || status=$?
if [ "$status" -ne 0 ]; then echo "--- sensor-sim log"; cat "$work/sim.log"; fi
exit "$status"
