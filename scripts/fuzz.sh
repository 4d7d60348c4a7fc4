#!/usr/bin/env bash
# Runs every cargo fuzz target in fuzz/ one after the other, each for SECONDS (default 60),
# and prints per target: executions, exec/s, corpus size, and crashes or hangs.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]
#
# Seeds come from fuzz/corpus/<target>/ (committed, never written to); what a run discovers
# is kept in fuzz/target/corpus/<target>/ and reused by the next run. A crash, hang
# (one input over FUZZ_TIMEOUT seconds, default 10) or OOM leaves its input in
# fuzz/artifacts/<target>/; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a <target> fuzz/artifacts/<target>/<file>
# Exit status: 0 when every target ran clean, 1 when any crashed or hung, 2 on usage.
#
# Only the stable toolchain is needed: cargo fuzz's nightly flags (-Zsanitizer=address) are
# enabled with RUSTC_BOOTSTRAP=1. cargo-fuzz is installed from crates.io when missing.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

SECONDS_PER_TARGET="${1:-60}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: SECONDS_PER_TARGET must be a positive integer, got '$SECONDS_PER_TARGET'" >&2
    usage >&2
    exit 2
fi
shift || true

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
cd "$FUZZ"
export RUSTC_BOOTSTRAP=1
FLAGS=(-O -a)   # optimised, with debug assertions and overflow checks
TIMEOUT="${FUZZ_TIMEOUT:-10}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi

mapfile -t ALL < <(cargo fuzz list)
if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
    for t in "${TARGETS[@]}"; do
        printf '%s\n' "${ALL[@]}" | grep -qx -- "$t" \
            || { echo "fuzz.sh: unknown target '$t'; targets: ${ALL[*]}" >&2; exit 2; }
    done
else
    TARGETS=("${ALL[@]}")
fi

echo "fuzz.sh: building ${#TARGETS[@]} targets" >&2
cargo fuzz build "${FLAGS[@]}" >&2

LOGS="$FUZZ/target/fuzz-logs"
mkdir -p "$LOGS"
SUMMARY="$LOGS/summary.txt"
failed=0
rows=()
for t in "${TARGETS[@]}"; do
    work="$FUZZ/target/corpus/$t"
    mkdir -p "$work" "$FUZZ/artifacts/$t" "$FUZZ/corpus/$t"
    before=$(find "$FUZZ/artifacts/$t" -type f | wc -l)
    log="$LOGS/$t.log"
    echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s (log: $log)" >&2
    start=$(date +%s)
    set +e
    # The outer timeout catches what libFuzzer's own per-input alarm cannot (a stuck exit).
    timeout --kill-after=30 $((SECONDS_PER_TARGET + 120)) \
        cargo fuzz run "${FLAGS[@]}" "$t" "$work" "$FUZZ/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    took=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "$work" "$FUZZ/corpus/$t" -type f | wc -l)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    after=$(find "$FUZZ/artifacts/$t" -type f | wc -l)
    new=$((after - before))
    status=ok
    if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
        status="FAILED (exit $rc, $new new artifact(s) in fuzz/artifacts/$t)"
        grep -m3 -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|Test unit written' "$log" >&2 || true
        failed=1
    fi
    rows+=("$(printf '%-18s %12s %9s %7s %6s %6ss  %s' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "${cov:-?}" "$took" "$status")")
done

{
    printf '%-18s %12s %9s %7s %6s %7s  %s\n' target execs exec/s corpus cov time result
    printf '%s\n' "${rows[@]}"
} | tee "$SUMMARY"
echo "fuzz.sh: ${SECONDS_PER_TARGET}s per target; summary in $SUMMARY" >&2
exit "$failed"
