#!/usr/bin/env bash
# Benchmark: provision blank emulated boards at 115200 baud with the chip's typical execution
# times, and compare the elapsed time with the physical floor of the same exchange (bytes on
# the wire x 10 bits / baud + the chip's typical execution times; on Mongoose OS, as its
# cryptoauthlib polls for them: 1 ms, then every 2 ms). Target ratio <= 1.3. The last line is the
# mean elapsed time over the mean floor.
# Usage: scripts/bench-provision.sh [RUNS] [kit|mos]   (default 3 runs over the kit transport;
# mos: a board running Mongoose OS, its RPC over the same line)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
transport=${2:-kit}
case "$transport" in
    kit | mos) ;;
    *) echo "bench-provision.sh: transport is kit or mos, not $transport" >&2; exit 2 ;;
esac
cargo build --release -q -p provisioner
P="${CARGO_TARGET_DIR:-$PWD/target}/release/provisioner"
work=$(mktemp -d)
sim=""
trap '[ -n "$sim" ] && kill "$sim" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
export PROVISIONER_HOME="$work/home"
export PROVISIONER_PASSPHRASE="bench passphrase $(od -An -N8 -tx1 /dev/urandom | tr -d ' ')"
"$P" init >/dev/null 2>&1
printf '%-4s %10s %10s %7s %8s %8s\n' run elapsed_s floor_s ratio bytes resent
rows="$work/rows"
for i in $(seq "$runs"); do
    "$P" sim-board --transport "$transport" --link "$work/tty$i" --state "$work/chip$i" --baud 115200 --timing typ 2>/dev/null &
    sim=$!
    for _ in $(seq 100); do [ -e "$work/tty$i" ] && break; sleep 0.05; done
    "$P" --json device provision --transport "$transport" --port "$work/tty$i" --id "salon-$i" --profile climat --lock 2>/dev/null |
        python3 -c '
import json, sys
b = json.load(sys.stdin)["boards"][0]
l = b["result"]["link"]
print("%-4s %10.3f %10.3f %7.3f %8d %8d" % (sys.argv[1], b["ms"] / 1000, b["floor_s"], b["ms"] / 1000 / b["floor_s"], l["bytes_out"] + l["bytes_in"], l["retries"]))
' "$i" | tee -a "$rows"
    kill "$sim"; wait "$sim" 2>/dev/null || true; sim=""
done
awk -v t="$transport" '{ e += $2; f += $3; n++ } END { if (n) printf "mean %9.3f %10.3f %7.3f  (%s, %d runs)\n", e / n, f / n, e / f, t, n }' "$rows"
