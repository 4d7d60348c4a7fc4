#!/usr/bin/env bash
# The main job, no hardware needed: create a CA, issue the broker's certificate, emit the
# mosquitto configuration, start mosquitto with it, and show a certificate-authenticated
# publish going through while an uncertified client is refused.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages mosquitto mosquitto-clients openssl

cargo build --release -q -p provisioner
P="$PWD/target/release/provisioner"
work=$(mktemp -d)
broker_pid=""
cleanup() { [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM
export PROVISIONER_HOME="$work/home"
# A demo passphrase: in real use, leave this unset and type it at the prompt.
export PROVISIONER_PASSPHRASE="demo passphrase $(od -An -N8 -tx1 /dev/urandom | tr -d ' ')"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "1. CA for the example house (manifests/examples/smart-home.toml)"
"$P" init --site manifests/examples/smart-home.toml
step "2. Broker certificate (SAN: localhost, 127.0.0.1)"
"$P" server issue --dns localhost --ip 127.0.0.1
step "3. Two clients: a sensor-like publisher and a monitor, keys made by openssl"
cd "$work"
for cn in salon-1 monitor; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$cn.key" \
        -subj "/CN=$cn" -out "$cn.csr" 2>/dev/null
done
"$P" cert sign --csr salon-1.csr --profile client --out salon-1.crt --publish maison/salon/temperature
"$P" cert sign --csr monitor.csr --profile client --out monitor.crt --subscribe 'maison/#'
step "4. mosquitto configuration from the ledger"
"$P" emit broker --out "$work/broker" --port "$port" --bind 127.0.0.1 --run-as "$(id -un)"
sed 's/^/    /' "$work/broker/mosquitto.conf"
mosquitto -c "$work/broker/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
tls=(-h 127.0.0.1 -p "$port" --cafile "$work/broker/ca.crt")
step "5. salon-1 publishes over mutual TLS; the monitor receives"
mosquitto_sub "${tls[@]}" --cert monitor.crt --key monitor.key -t 'maison/#' -v -C 1 -W 10 >"$work/got" &
sub=$!
for _ in $(seq 50); do
    mosquitto_pub "${tls[@]}" --cert salon-1.crt --key salon-1.key -q 1 -t maison/salon/temperature -m 21.5
    kill -0 "$sub" 2>/dev/null || break
    sleep 0.2
done
wait "$sub"
echo "    received: $(cat "$work/got")"
step "6. A client without a certificate is refused"
if mosquitto_pub "${tls[@]}" -t maison/salon/temperature -m intruder 2>"$work/refused"; then
    echo "    UNEXPECTED: accepted" >&2; exit 1
fi
echo "    refused: $(head -1 "$work/refused")"
step "done: CA, broker certificate, mosquitto with mTLS + ACL + CRL, certified publish delivered"
