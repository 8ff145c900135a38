# Sourced by the GPU scripts. burn's CUDA backend (CubeCL) needs two things at run time:
#  - CUDA headers: kernels are compiled through NVRTC with --include-path=$CUDA_PATH/include
#    (and $CUDA_PATH/include/cccl where CUDA 13 keeps <cuda/pipeline>); without CUDA_PATH it
#    tries /usr/local/cuda, /opt/cuda and /usr;
#  - libcuda (the driver) and libnvrtc, loaded by name through the dynamic loader
#    (libnvrtc.so, libnvrtc.so.13, libnvrtc.so.12, ...).
# This finds a directory with include/cuda_runtime.h (a toolkit, or the include folder of
# PyTorch's nvidia-* wheels), exports CUDA_PATH, and puts the NVRTC it finds on
# LD_LIBRARY_PATH. It prints what it chose, so a log shows where the headers came from.

cuda_candidates() {
    [ -n "${CUDA_PATH:-}" ] && echo "$CUDA_PATH"
    ls -d /usr/local/cuda /usr/local/cuda-* /opt/cuda 2>/dev/null
    # PyTorch's CUDA wheels: nvidia/cu13 (CUDA 13 layout), nvidia/cuda_runtime (CUDA 12 layout).
    python3 - <<'PY' 2>/dev/null
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
for root in nvidia.__path__:
    for sub in ("cu13", "cu12", "cuda_runtime"):
        print(os.path.join(root, sub))
PY
}

for dir in $(cuda_candidates); do
    if [ -f "$dir/include/cuda_runtime.h" ]; then
        export CUDA_PATH="$dir"
        break
    fi
done
if [ -z "${CUDA_PATH:-}" ] || [ ! -f "$CUDA_PATH/include/cuda_runtime.h" ]; then
    echo "cuda_env: no CUDA headers found (looked in: $(cuda_candidates | tr '\n' ' ')); set CUDA_PATH" >&2
    return 1 2>/dev/null || exit 1
fi

nvrtc=$(ls "$CUDA_PATH"/lib64/libnvrtc.so* "$CUDA_PATH"/lib/libnvrtc.so* 2>/dev/null | head -n 1 || true)
if [ -z "$nvrtc" ]; then
    nvrtc=$(ldconfig -p 2>/dev/null | awk '/libnvrtc\.so/ {print $NF; exit}' || true)
fi
if [ -z "$nvrtc" ]; then
    nvrtc=$(python3 -c 'import glob, nvidia, os; print(next(iter(sorted(f for r in nvidia.__path__ for f in glob.glob(os.path.join(r, "*", "lib", "libnvrtc.so*")))), ""))' 2>/dev/null || true)
fi
if [ -n "$nvrtc" ]; then
    export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "cuda_env: CUDA_PATH=$CUDA_PATH nvrtc=${nvrtc:-not found} cccl=$([ -d "$CUDA_PATH/include/cccl" ] && echo yes || echo no)"
