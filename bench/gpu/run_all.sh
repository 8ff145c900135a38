#!/usr/bin/env bash
# Everything issue #4 asks to measure on a GPU, in as few device calls as the 10-minute limit
# per command allows. Build here first (no CUDA toolkit needed), then pack the two binaries:
# unpacked they are about 35 and 32 MB, over the device tool's 64 MiB per call together with
# the repository; stripped and xz-compressed they are under 9 MB.
#   CUDARC_CUDA_VERSION=13000 cargo build --release --locked --features cuda --bins --example bench_step
# (CUDARC_CUDA_VERSION picks the CUDA API the bindings are generated for; without nvcc the
# build falls back to the newest cudarc knows, 13.4, and the device image's driver is CUDA 13.0.)
#   mkdir -p .gpu && for b in pipe examples/bench_step; do
#       strip -o .gpu/${b#*/} target/release/$b && xz -f -T2 -6 .gpu/${b#*/}; done
# (`.gpu/` is in .gitignore; carry `.gpu`), then on the GPU machine:
#   bash bench/gpu/run_all.sh check           # environment, smoke test, pipe vs PyTorch
#   bash bench/gpu/run_all.sh pipeline        # the headline pipeline on cuda, then on the CPU
#   bash bench/gpu/run_all.sh pipeline cuda   # one device only, should both not fit in a call
# PIPELINE=file.yaml runs another pipeline file. Logs go to $OUT when it is set (the device
# tool brings that folder back), else to ./gpu-logs.
set -euo pipefail
phase=${1:?usage: run_all.sh check | pipeline [DEVICE ...]}
shift
cd "$(dirname "$0")/../.."
BIN=${BIN:-.gpu}
LOGS=${OUT:-gpu-logs}
mkdir -p "$LOGS"
source bench/gpu/cuda_env.sh

# Unpack the carried binaries with python3's lzma (the GPU image need not have xz).
for packed in "$BIN"/*.xz; do
    [ -e "$packed" ] || continue
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$packed" "${packed%.xz}"
    chmod +x "${packed%.xz}"
done

case "$phase" in
check)
    {
        nvidia-smi
        python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
    } 2>&1 | tee "$LOGS/env.txt"
    bash bench/gpu/smoke.sh "$BIN/pipe" 2>&1 | tee "$LOGS/smoke.txt"
    bash bench/gpu/bench.sh "$BIN/bench_step" 2>&1 | tee "$LOGS/bench.txt"
    ;;
pipeline)
    devices=("$@")
    [ ${#devices[@]} -gt 0 ] || devices=(cuda cpu)
    for dev in "${devices[@]}"; do
        start=$(date +%s.%N)
        "$BIN/pipe" --cache-dir "/tmp/pipe-cache-$dev" --device "$dev" run \
            "${PIPELINE:-pipelines/lottery_vs_rethinking.yaml}" > "$LOGS/pipeline-$dev.txt" 2>&1
        end=$(date +%s.%N)
        echo "$dev: $(python3 -c "print(f'{$end - $start:.1f}')") s wall, $(nproc) cores" |
            tee -a "$LOGS/pipeline-times.txt"
    done
    ;;
*)
    echo "unknown phase \`$phase\`; use check or pipeline" >&2
    exit 2
    ;;
esac
