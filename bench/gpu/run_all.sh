#!/usr/bin/env bash
# Everything issue #4 asks to measure on a GPU, in as few device calls as the 10-minute limit
# per command allows. Build here first (no CUDA toolkit needed):
#   cargo build --release --locked --features cuda --bins --example bench_step
#   mkdir -p .gpu && cp target/release/pipe target/release/examples/bench_step .gpu/
# (add `/.gpu/` to .git/info/exclude and carry `.gpu`), then on the GPU machine:
#   bash bench/gpu/run_all.sh check       # environment, device probe, smoke test, pipe vs PyTorch
#   bash bench/gpu/run_all.sh pipeline    # the headline pipeline on cuda, then on the CPU
# Logs go to $OUT when it is set (the device tool brings that folder back), else to ./gpu-logs.
set -euo pipefail
phase=${1:?usage: run_all.sh check|pipeline}
cd "$(dirname "$0")/../.."
BIN=${BIN:-.gpu}
LOGS=${OUT:-gpu-logs}
mkdir -p "$LOGS"
source bench/gpu/cuda_env.sh

case "$phase" in
check)
    {
        nvidia-smi
        python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
        "$BIN/pipe" kinds > /dev/null
    } 2>&1 | tee "$LOGS/env.txt"
    bash bench/gpu/smoke.sh "$BIN/pipe" 2>&1 | tee "$LOGS/smoke.txt"
    bash bench/gpu/bench.sh "$BIN/bench_step" 2>&1 | tee "$LOGS/bench.txt"
    ;;
pipeline)
    for dev in cuda cpu; do
        start=$(date +%s.%N)
        "$BIN/pipe" --cache-dir "/tmp/pipe-cache-$dev" --device "$dev" run \
            pipelines/lottery_vs_rethinking.yaml > "$LOGS/pipeline-$dev.txt" 2>&1
        end=$(date +%s.%N)
        echo "$dev: $(echo "$end - $start" | bc) s wall, $(nproc) cores" | tee -a "$LOGS/pipeline-times.txt"
    done
    ;;
*)
    echo "unknown phase \`$phase\`; use check or pipeline" >&2
    exit 2
    ;;
esac
