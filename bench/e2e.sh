#!/usr/bin/env bash
# What a user runs, end to end: each bench/e2e/CASE.yaml as one `pipe run` with default flags
# on a fresh cache, against the same work as a plain PyTorch script (bench/torch_e2e.py:
# hand-written torch.nn modules, in-memory tensors, a plain loop), alternating, ROUNDS times.
# Prints each side's median wall time (process start to exit, data loading included), the
# ratio pipe / PyTorch (< 1: pipe is faster), every round, and both final test accuracies.
#
# Usage: bench/e2e.sh [CASE...]     (default: lenet conv2 resnet20 chain)
#   ROUNDS=3     alternating rounds per case; the table gives medians
#   THREADS=N    torch.set_num_threads(N) (default: nproc, the cores pipe's default flags use)
# Needs python3 with torch (`pip install torch`) and a machine with nothing else running.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(lenet conv2 resnet20 chain)
rounds="${ROUNDS:-3}"
threads="${THREADS:-$(nproc)}"
python3 -c 'import torch' 2>/dev/null || { echo "install PyTorch: pip install torch" >&2; exit 1; }
cargo build --release --locked -q --bin pipe
pipe="${CARGO_TARGET_DIR:-target}/release/pipe"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# seconds CMD...: runs CMD with its output in $work/out and prints its wall time in seconds.
seconds() {
    local t0 t1
    t0="$(date +%s.%N)"
    "$@" >"$work/out" 2>&1 || { cat "$work/out" >&2; echo "failed: $*" >&2; exit 1; }
    t1="$(date +%s.%N)"
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$t1"
}

printf '%-10s %9s %9s %7s %10s %10s   %s\n' case pipe_s torch_s ratio pipe_acc torch_acc "rounds (pipe/torch s)"
for case in "${cases[@]}"; do
    [ -f "bench/e2e/$case.yaml" ] || { echo "no bench/e2e/$case.yaml" >&2; exit 1; }
    pipe_s="" torch_s=""
    for r in $(seq "$rounds"); do
        cache="$work/cache-$case-$r"
        pipe_s="$pipe_s $(seconds env -u PIPE_THREADS -u PIPE_CACHE_DIR -u RAYON_NUM_THREADS \
            "$pipe" --cache-dir "$cache" run -q "bench/e2e/$case.yaml")"
        pipe_acc="$("$pipe" --cache-dir "$cache" show --json test |
            python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["metrics"]["accuracy"])')"
        rm -rf "$cache"
        torch_s="$torch_s $(seconds python3 bench/torch_e2e.py "$case" "$threads")"
        torch_acc="$(awk '$1 == "RESULT" {print $3}' "$work/out")"
    done
    python3 - "$case" "$pipe_s" "$torch_s" "$pipe_acc" "$torch_acc" <<'PY'
import statistics, sys
case, a_all, b_all = sys.argv[1], [float(v) for v in sys.argv[2].split()], [float(v) for v in sys.argv[3].split()]
a, b = statistics.median(a_all), statistics.median(b_all)
rounds = " ".join(f"{x:.1f}/{y:.1f}" for x, y in zip(a_all, b_all))
print(f"{case:<10} {a:9.2f} {b:9.2f} {a / b:7.2f} {sys.argv[4]:>10} {sys.argv[5]:>10}   {rounds}", flush=True)
PY
done
echo "pipe: default flags, a fresh cache each round; PyTorch $(python3 -c 'import torch; print(torch.__version__)') with torch.set_num_threads($threads); medians of $rounds alternating rounds"
