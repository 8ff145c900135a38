#!/usr/bin/env bash
# GPU smoke test: trains bench/gpu/smoke.yaml on the GPU and on the CPU and checks that
#  - the training loss falls,
#  - GPU memory stays flat from epoch to epoch (burn 0.21 has an open report of a training-time
#    leak on CUDA), sampled with nvidia-smi every 200 ms,
#  - GPU and CPU test accuracies agree within 1 point (they are not bit-identical: different
#    kernels, different summation order).
# Usage (from the repository root): bash bench/gpu/smoke.sh [PIPE_BINARY built with --features cuda]
set -euo pipefail
source "$(dirname "$0")/cuda_env.sh"
PIPE=${1:-target/release/pipe}
out=$(mktemp -d)
echo "work dir: $out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/mem.csv" &
smi=$!
t0=$(date +%s.%N)
"$PIPE" --cache-dir "$out/gpu" --device cuda run bench/gpu/smoke.yaml > "$out/gpu.txt" 2> "$out/gpu.err"
t1=$(date +%s.%N)
kill "$smi" || true
"$PIPE" --cache-dir "$out/cpu" --device cpu run bench/gpu/smoke.yaml > "$out/cpu.txt" 2> "$out/cpu.err"
t2=$(date +%s.%N)
echo "gpu wall: $(echo "$t1 - $t0" | bc) s   cpu wall: $(echo "$t2 - $t1" | bc) s"
python3 bench/gpu/check.py "$out"
