#!/usr/bin/env bash
# The hostile-world suite, in one command:
#
#   hostile/run.sh            # the full run (about an hour)
#   hostile/run.sh --bounded  # the bounded run CI makes (a few minutes)
#
# It runs, against the real `exchange` binary:
#   1. the crash loop: SIGKILL at random moments, and power cuts under the
#      batch policy (gateway/tests/crash_loop.rs);
#   2. the hostile world: an open-loop flood, idle WebSocket clients, a
#      frozen PostgreSQL, a full disk, users attacking each other
#      (gateway/tests/hostile_world.rs; the full-disk test mounts a tmpfs,
#      so it needs root);
#   3. API fuzzing with schemathesis against openapi.json
#      (gateway/tests/api_fuzz.rs);
#   4. the libFuzzer targets (fuzz/run.sh), after their seeds and kept
#      regressions (hostile/tests/fuzz_corpus.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--bounded" ]; then
    cycles=6; scale=bounded; examples=25; fuzz_seconds=10
else
    cycles=200; scale=full; examples=500; fuzz_seconds=300
fi
# Runs a test command, shows the lines matching a pattern, and stops the
# suite on a failure with the end of its output.
step() {
    local pattern="$1"
    shift
    local log
    log="$(mktemp)"
    if "$@" >"$log" 2>&1; then
        grep -E "$pattern|test result" "$log" || true
        rm -f "$log"
    else
        tail -60 "$log"
        echo "hostile: FAILED: $*"
        exit 1
    fi
}
echo "== crash loop: $cycles SIGKILL cycles and $cycles power cuts"
step "SIGKILL cycles" \
    env HOSTILE_CYCLES="$cycles" cargo test --release -p gateway --test crash_loop -- --nocapture
echo "== hostile world ($scale)"
step "flood of|idle WebSocket|database frozen|acknowledged before" \
    env HOSTILE_SCALE="$scale" cargo test --release -p gateway --test hostile_world -- --nocapture --test-threads 1
echo "== API fuzzing: $examples examples per operation"
step "generated|Tested" \
    env HOSTILE_API_EXAMPLES="$examples" cargo test --release -p gateway --test api_fuzz -- --nocapture
echo "== fuzz targets: seeds and regressions, then $fuzz_seconds s each under libFuzzer"
step "seeds," cargo test --release -p hostile -- --nocapture
fuzz/run.sh "$fuzz_seconds"
echo "hostile: the suite passed"
