#!/usr/bin/env bash
# The long fuzz budget: tests/fuzz/'s three properties (generated pipelines, the mutated
# pipeline corpus, mutated caches) with many more cases than `cargo test` runs, from a random
# seed. A failure prints its input shrunk to a minimal case; a case that aborts the process
# (past the memory bound, or a hang caught by the watchdog) leaves its input in
# $PIPE_FUZZ_SAVE/current-case.txt.
#
#   PIPE_FUZZ_CASES=10000 scripts/fuzz-long.sh     # cases per property (default 10000)
#   PIPE_FUZZ_SEED=1234 scripts/fuzz-long.sh       # replay a run's cases (the seed is printed)
#   scripts/fuzz-long.sh cache                     # only the properties whose name has `cache`
#
# About 80 ms of cases per case count on one core of the 2-core CI machine (all three
# properties together), so the default takes some 15 minutes there.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIPE_FUZZ_CASES="${PIPE_FUZZ_CASES:-10000}"
export PIPE_FUZZ_SEED="${PIPE_FUZZ_SEED:-$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))}"
export PIPE_FUZZ_SAVE="${PIPE_FUZZ_SAVE:-$(mktemp -d -t pipe-fuzz.XXXXXX)}"
mkdir -p "$PIPE_FUZZ_SAVE"
log="$PIPE_FUZZ_SAVE/log.txt"

# Built first, so that the wall time below is the cases' alone.
cargo test --locked --test fuzz --no-run
echo "fuzz: $PIPE_FUZZ_CASES cases per property, seed $PIPE_FUZZ_SEED; log in $log"
start=$(date +%s)
# One test thread: cases run one at a time anyway (the memory bound is process-wide).
status=0
cargo test --locked --test fuzz -- --nocapture --test-threads=1 "$@" >"$log" 2>&1 || status=$?
end=$(date +%s)
grep '^fuzz: ' "$log" || true
echo "fuzz: wall time $((end - start)) s, exit status $status"
if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    if [ -s "$PIPE_FUZZ_SAVE/current-case.txt" ]; then
        echo "fuzz: the case running when it stopped is in $PIPE_FUZZ_SAVE/current-case.txt"
    fi
fi
exit "$status"
