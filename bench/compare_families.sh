#!/usr/bin/env bash
# One training step of each model family, pipe (CPU, burn Flex) against PyTorch (CPU), on the
# same machine in the same run with the same number of threads: prints ms per step and the
# ratio pipe / PyTorch (< 1: pipe is faster) against the hand-written torch.nn model a user
# would write (bench/torch_models.py) and, second, against PyTorch running pipe's own layer
# program (bench/torch_check.py), with each model's parameters and forward FLOPs.
#
# Usage: bench/compare_families.sh [STEPS=5]
#   CASES="resnet20_32:128 conv4_32:60"   models (examples/family_step.rs) and batch sizes,
#                                         each with its own step count after a second colon
#                                         (lenet_28:60:200); the default is issue 9's list,
#                                         below, LeNet at 200 steps: its step takes about a
#                                         millisecond, and over 5 the ratio swung 0.7 to 1.2
#   ROUNDS=3                              pipe and PyTorch alternate this many times per case;
#                                         the table gives each side's median and their ratio,
#                                         then every round's ms (this machine's neighbours
#                                         moved single timings by up to 2x within minutes)
#   EPOCH_STEPS=79                        also times ResNet-20 for this many steps of 128
#                                         (79 × 128 = 10,112 images: one epoch of 10k); 0: skip
#   PIPE_NN_OPS=reference                 pipe on burn's generic conv, batch-norm and pooling
#                                         ops instead of its CPU kernels (src/nn/ops)
# Needs python3 with torch and safetensors (`pip install torch safetensors`).
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-5}"
cases="${CASES:-resnet20_32:128 conv4_32:60 vgg11_32:128 mobilenet_v2_tiny_32:128 lenet_28:60:200}"
epoch_steps="${EPOCH_STEPS:-79}"
rounds="${ROUNDS:-3}"
threads="$(nproc)"
python3 -c 'import torch, safetensors' 2>/dev/null ||
    { echo "install PyTorch and safetensors: pip install torch safetensors" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo build --release --locked -q --example family_step
bin="${CARGO_TARGET_DIR:-target}/release/examples/family_step"

# compare NAME BATCH STEPS LABEL: one line of the table, from ROUNDS alternating runs of pipe,
# the hand-written PyTorch model and the one built from pipe's layer program.
compare() {
    local name="$1" batch="$2" n="$3" label="$4" pipe_line pipe_ms="" std_ms="" prog_ms=""
    for _ in $(seq "$rounds"); do
        pipe_line="$(ONLY="$name" "$bin" "$out" "$batch" "$n" | awk '$1 == "BENCH"')"
        pipe_ms="$pipe_ms $(awk '{print $3}' <<<"$pipe_line")"
        std_ms="$std_ms $(torch_ms standard "$name" "$batch" "$n")"
        prog_ms="$prog_ms $(torch_ms program "$name" "$batch" "$n")"
    done
    python3 - "$label" "$batch" "$pipe_line" "$pipe_ms" "$std_ms" "$prog_ms" <<'PY'
import statistics, sys
label, batch, pipe = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
a_all, b_all, c_all = ([float(v) for v in arg.split()] for arg in sys.argv[4:7])
a, b, c = (statistics.median(v) for v in (a_all, b_all, c_all))
params, flops = int(pipe[3]), int(pipe[4])
rounds = " ".join(f"{x:.1f}/{y:.1f}/{z:.1f}" for x, y, z in zip(a_all, b_all, c_all))
print(f"{label:<24} {batch:>5} {params:>10,} {flops:>13,} {a:9.1f} {b:9.1f} {a / b:6.2f} {c:9.1f} {a / c:6.2f}   {rounds}")
PY
}

# torch_ms MODEL NAME BATCH STEPS: PyTorch's ms per step for one model.
torch_ms() {
    python3 bench/torch_family_step.py "$out" "$threads" "$3" "$4" "$1" "$2" | awk '$1 == "BENCH" {print $3}'
}

printf '%-24s %5s %10s %13s %9s %9s %6s %9s %6s   %s\n' model batch params fwd_flops pipe_ms torch_ms ratio prog_ms ratio \
    "rounds (pipe/torch/prog ms)"
for case in $cases; do
    IFS=: read -r name batch n <<<"$case"
    compare "$name" "$batch" "${n:-$steps}" "$name"
done
if [ "$epoch_steps" -gt 0 ]; then
    compare resnet20_32 128 "$epoch_steps" "resnet20_32 epoch/step"
    echo "(epoch: $epoch_steps steps of 128 = $((epoch_steps * 128)) images; ms are per step, × $epoch_steps for the epoch)"
fi
echo "torch: hand-written torch.nn modules (bench/torch_models.py); prog: PyTorch built from pipe's layer program"
echo "$steps timed steps (unless the case names its own) after 2 warm-up, $threads threads on both sides (torch.set_num_threads($threads)); ms: median of $rounds alternating rounds"
