#!/usr/bin/env bash
# One training step of every model family, pipe (CPU, burn Flex) against PyTorch (CPU) on the
# same machine in the same run, with the same number of threads: prints ms per step and the
# ratio pipe / PyTorch (< 1: pipe is faster), with each model's parameters and forward FLOPs.
#
# Usage: bench/compare_families.sh [BATCH=128] [STEPS=5]     (ONLY=conv4_32,resnet20_32 to pick)
#        PIPE_NN_OPS=reference bench/compare_families.sh   (pipe on burn's generic conv, batch-norm
#        and pooling ops instead of its CPU kernels, src/nn/ops)
# Needs python3 with torch (`pip install torch`).
set -euo pipefail
cd "$(dirname "$0")/.."
batch="${1:-128}"
steps="${2:-5}"
threads="$(nproc)"
python3 -c 'import torch' 2>/dev/null || { echo "install PyTorch: pip install torch" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo build --release --locked -q --example family_step
pipe_out="$("${CARGO_TARGET_DIR:-target}/release/examples/family_step" "$out" "$batch" "$steps")"
names="$(awk '$1 == "BENCH" {print $2}' <<<"$pipe_out")"
# shellcheck disable=SC2086
torch_out="$(python3 bench/torch_family_step.py "$out" "$threads" "$batch" "$steps" $names)"
printf '%-16s %12s %14s %10s %10s %7s\n' model params fwd_flops pipe_ms torch_ms ratio
while read -r _ name ms params flops; do
    t="$(awk -v n="$name" '$1 == "BENCH" && $2 == n {print $3}' <<<"$torch_out")"
    python3 -c "import sys; n,p,f,a,b=sys.argv[1:]; print(f'{n:<16} {int(p):>12,} {int(f):>14,} {float(a):10.1f} {float(b):10.1f} {float(a)/float(b):7.2f}')" \
        "$name" "$params" "$flops" "$ms" "$t"
done <<<"$pipe_out"
echo "batch $batch, $steps timed steps after 2 warm-up, $threads threads (torch.set_num_threads($threads))"
