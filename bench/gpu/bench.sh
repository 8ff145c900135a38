#!/usr/bin/env bash
# pipe against PyTorch on the same GPU, in the same call: ms per LeNet-300-100 Adam step at
# batch 60 and 1024, and the ratio. Build first (here, where cargo is):
#   cargo build --release --features cuda --example bench_step
# then on the GPU machine, from the repository root:
#   bash bench/gpu/bench.sh target/release/examples/bench_step
set -euo pipefail
source "$(dirname "$0")/cuda_env.sh"
BIN=${1:-target/release/examples/bench_step}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
pipe_out=$("$BIN" cuda 60 1024)
torch_out=$(python3 bench/gpu/pytorch_step.py cuda 60 1024)
echo "$pipe_out" | sed 's/^/pipe    /'
echo "$torch_out" | sed 's/^/pytorch /'
printf '%-10s %10s %10s %7s\n' step pipe_ms torch_ms ratio
for b in 60 1024; do
    p=$(echo "$pipe_out" | awk -v n="step/b$b" '$2 == n {print $3}')
    t=$(echo "$torch_out" | awk -v n="step/b$b" '$2 == n {print $3}')
    python3 -c "import sys; p, t = float(sys.argv[1]), float(sys.argv[2]); print(f'b{sys.argv[3]:<9} {p:10.3f} {t:10.3f} {p / t:7.2f}')" "$p" "$t" "$b"
done
