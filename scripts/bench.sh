#!/usr/bin/env bash
# One benchmark report: runs the existing benchmarks and prints one table, also written as
# JSON to target/bench-report.json (under CARGO_TARGET_DIR when set).
#   provisioning   scripts/bench-provision.sh: elapsed vs physical floor (115200 baud, typical
#                  chip timings)
#   issuance       ca/examples/bench_issue.rs: certificates per second vs `openssl speed
#                  ecdsap256` signatures per second, measured in the same run
#   air            lora-link/examples/bytes_on_air.rs: bytes and time on air of one reading vs
#                  the JWT/AES-CBC scheme (SF7 and SF12)
#   gateway        gateway/examples/bench_gateway.rs: messages per second from mosquitto into
#                  sealed frames and CPU per message vs a plain `mosquitto_sub` on the same
#                  broker (GATEWAY_N=20000 readings); end-to-end latency p50/p99 through gateway,
#                  emulated air, lora-link rx and the far broker, without the time on air
#                  (LATENCY_N=300 readings, one every 100 ms)
#   renewal        provisioner/examples/bench_renewal.rs: renewals per second for RENEW_N=1000
#                  queued requests answered by `provisioner renewal-service run` through a real
#                  mosquitto, next to the batched issuance rate of the same CA in the same run
#   memory         peak resident set (VmHWM) of `gateway` and `lora-link rx` during a short
#                  `provisioner demo` (6 sensors, 10 s of traffic)
# Usage: scripts/bench.sh [PROVISIONING_RUNS] (default 3); ISSUE_N=2000 certificates.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages mosquitto mosquitto-clients openssl
runs=${1:-3}
target="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "building (release)..." >&2
cargo build --release -q -p provisioner -p gateway -p lora-link
cargo build -q -p provisioner
cargo build --release -q -p ca --example bench_issue
cargo build --release -q -p lora-link --example bytes_on_air
cargo build --release -q -p gateway --example bench_gateway
# bench_renewal moves its set-up clock with PROVISIONER_FAKE_NOW: debug builds only.
cargo build -q -p provisioner --example bench_renewal

echo "provisioning: $runs runs..." >&2
scripts/bench-provision.sh "$runs" >"$out/provision.txt"
echo "issuance: ${ISSUE_N:-2000} certificates and openssl speed..." >&2
"$target/release/examples/bench_issue" "${ISSUE_N:-2000}" >"$out/issue.txt" 2>/dev/null
"$target/release/examples/bytes_on_air" >"$out/air.txt"

echo "gateway: throughput and latency (log: $target/bench-gateway.log)..." >&2
"$target/release/examples/bench_gateway" --bin-dir "$target/release" \
    --messages "${GATEWAY_N:-20000}" --latency-messages "${LATENCY_N:-300}" \
    >"$out/gateway.json" 2>"$target/bench-gateway.log" \
    || { tail -20 "$target/bench-gateway.log" >&2; exit 1; }

echo "renewal service: ${RENEW_N:-1000} queued requests..." >&2
"$target/debug/examples/bench_renewal" --bin "$target/debug/provisioner" "${RENEW_N:-1000}" \
    >"$out/renewal.json" 2>"$target/bench-renewal.log" \
    || { tail -20 "$target/bench-renewal.log" >&2; exit 1; }

echo "memory: provisioner demo (6 sensors, 10 s)..." >&2
# Samples VmHWM of the demo's gateway and lora-link children every 100 ms; the last sample
# before a process exits is its peak.
python3 - "$target/release" >"$out/memory.json" <<'PY'
import json, os, subprocess, sys, time
rel = sys.argv[1]
want = {os.path.realpath(os.path.join(rel, "gateway")): "gateway",
        os.path.realpath(os.path.join(rel, "lora-link")): "lora-link rx"}
demo = subprocess.Popen([os.path.join(rel, "provisioner"), "--json", "demo", "--sensors", "6",
                         "--duration", "10"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                        start_new_session=True)
peak = {}
while demo.poll() is None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            name = want.get(os.readlink(f"/proc/{pid}/exe"))
            if not name:
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        kb = int(line.split()[1])
                        peak[name] = max(peak.get(name, 0), kb)
        except OSError:
            pass
    time.sleep(0.1)
demo.stdout.read()
json.dump({"demo_exit": demo.returncode, "vmhwm_kib": peak}, sys.stdout)
PY

python3 - "$out" "$target/bench-report.json" <<'PY'
import json, re, sys
d, dest = sys.argv[1], sys.argv[2]
rows, report = [], {}

prov = [l.split() for l in open(f"{d}/provision.txt") if re.match(r"^\d+\s", l)]
if prov:
    el = [float(r[1]) for r in prov]; fl = [float(r[2]) for r in prov]; ra = [float(r[3]) for r in prov]
    report["provisioning"] = {"runs": len(prov), "elapsed_s": el, "floor_s": fl, "ratio": ra,
                              "bytes": [int(r[4]) for r in prov], "resent": [int(r[5]) for r in prov]}
    rows.append(("provisioning, one board, 115200 baud (mean of %d)" % len(prov),
                 "%.2f s" % (sum(el) / len(el)), "physical floor %.2f s" % (sum(fl) / len(fl)),
                 "%.2f" % (sum(ra) / len(ra)), "<= 1.3"))

iss = {}
for l in open(f"{d}/issue.txt"):
    m = re.match(r"^(.*?)\s+([\d.]+)$", l.rstrip())
    if m:
        iss[m.group(1).strip()] = float(m.group(2))
get = lambda prefix: next((v for k, v in iss.items() if k.startswith(prefix)), None)
batched, durable, ossl = get("certificates, batched"), get("certificates, durable"), get("openssl ecdsap256")
report["issuance"] = {"batched_per_s": batched, "durable_per_s": durable, "openssl_sign_per_s": ossl}
if batched and ossl:
    rows.append(("certificate issuance, batched", "%.0f /s" % batched, "openssl sign %.0f /s" % ossl,
                 "%.3f" % (batched / ossl), ">= 0.25"))
if durable and ossl:
    rows.append(("certificate issuance, one commit each", "%.0f /s" % durable, "openssl sign %.0f /s" % ossl,
                 "%.3f" % (durable / ossl), "-"))

air = {}
for l in open(f"{d}/air.txt"):
    m = re.match(r"^(\d+)\s+(JWT/AES-CBC|lora-link)\s+(\d+)\s+([\d.]+ ?ms)", l)
    if m:
        air.setdefault(m.group(1), {})[m.group(2)] = (int(m.group(3)), m.group(4).replace(" ", ""))
report["air"] = {}
for sf, v in sorted(air.items(), key=lambda kv: int(kv[0])):
    if "JWT/AES-CBC" in v and "lora-link" in v:
        (ob, ot), (nb, nt) = v["JWT/AES-CBC"], v["lora-link"]
        ms = lambda s: float(s.rstrip("ms"))
        report["air"]["sf" + sf] = {"bytes": nb, "toa_ms": ms(nt), "jwt_bytes": ob, "jwt_toa_ms": ms(ot)}
        rows.append((f"one reading on air, SF{sf}/125 kHz", f"{nb} B, {nt}", f"JWT/AES-CBC {ob} B, {ot}",
                     "%.2f / %.2f" % (ob / nb, ms(ot) / ms(nt)), "old/ours (bytes / time)"))

gw = json.load(open(f"{d}/gateway.json"))
report["gateway"] = gw
t, l = gw["throughput"], gw["latency"]
rows.append(("gateway throughput, MQTT in -> sealed frames (burst of %d readings)" % t["messages"],
             "%.0f msg/s (%d/%d arrived)" % (t["gateway_msg_per_s"], t["gateway_received"], t["messages"]),
             "mosquitto_sub %.0f msg/s (%d/%d arrived)" % (t["mosquitto_sub_msg_per_s"], t["mosquitto_sub_received"], t["messages"]),
             "%.2f" % (t["gateway_msg_per_s"] / t["mosquitto_sub_msg_per_s"]), ">= 0.9 (keeps up)"))
rows.append(("gateway CPU per message", "%.1f us" % t["gateway_cpu_us_per_msg"],
             "mosquitto_sub %.1f us" % t["mosquitto_sub_cpu_us_per_msg"],
             "%.2f" % (t["gateway_cpu_us_per_msg"] / t["mosquitto_sub_cpu_us_per_msg"]), "-"))
rows.append(("end-to-end latency without time on air, p50 / p99 (%d readings)" % l["messages"],
             "%.1f / %.1f ms" % (l["p50_ms"], l["p99_ms"]), "time on air %.1f ms" % l["air_mean_ms"],
             "%.3f" % (l["p99_ms"] / l["air_mean_ms"]), "p99 / air < 0.25"))

ren = json.load(open(f"{d}/renewal.json"))
report["renewal"] = ren
rows.append(("renewal service, %d queued requests through mosquitto" % ren["requests"],
             "%.0f /s (%d/%d answered)" % (ren["renewals_per_s"], ren["answered"], ren["requests"]),
             "batched issuance %.0f /s" % ren["batched_issuance_per_s"],
             "%.3f" % ren["ratio"], "-"))

mem = json.load(open(f"{d}/memory.json"))
report["memory"] = mem
for name, kb in sorted(mem["vmhwm_kib"].items()):
    rows.append((f"memory peak (VmHWM), {name}", "%.1f MiB" % (kb / 1024), "6 sensors, 10 s demo", "-", "-"))

w = [max(len(r[i]) for r in rows + [("measure", "ours", "reference", "ratio", "target")]) for i in range(5)]
fmt = "  ".join("{:<%d}" % x for x in w)
print(fmt.format("measure", "ours", "reference", "ratio", "target"))
for r in rows:
    print(fmt.format(*r))
report["table"] = [dict(zip(["measure", "ours", "reference", "ratio", "target"], r)) for r in rows]
json.dump(report, open(dest, "w"), indent=2)
print(f"written: {dest}", file=sys.stderr)
PY
