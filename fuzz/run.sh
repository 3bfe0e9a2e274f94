#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) from its seed corpus
# (written by `hostile`'s fuzz-seeds), under libFuzzer with AddressSanitizer.
#
#   fuzz/run.sh            # a minute per target
#   fuzz/run.sh 3600       # an hour per target
#   fuzz/run.sh 10 snapshot engine_commands
#
# A crash stops the run: libFuzzer writes the input to
# fuzz/artifacts/<target>/. Fix the exchange, then keep the input in
# fuzz/regressions/<target>/ so that every `cargo test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo run --quiet -p hostile --bin fuzz-seeds -- fuzz/corpus
cd fuzz
# cargo fuzz passes -Z flags to rustc; the stable toolchain takes them so.
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build
total=0
for target in "${targets[@]}"; do
    log="$(mktemp)"
    if ! cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/"
        exit 1
    fi
    runs="$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")"
    rate="$(awk '/stat::average_exec_per_sec/ { print $2 }' "$log")"
    echo "fuzz: $target: ${runs:-0} executions in ${seconds} s (${rate:-0}/s), no crash"
    total=$((total + ${runs:-0}))
    rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets, $total executions, no crash"
