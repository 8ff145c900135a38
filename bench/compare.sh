#!/usr/bin/env bash
# Runs the criterion bench (benches/train_step.rs) and the PyTorch reference
# (bench/pytorch_lenet.py) and prints pipe/PyTorch time ratios (< 1: pipe is faster).
#
# Usage: bench/compare.sh            (from anywhere; uses the crate of this script)
#        MANIFEST=path/Cargo.toml bench/compare.sh   (another crate with the same bench)
#        SKIP_CARGO=1 bench/compare.sh               (reuse the last criterion results)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="${MANIFEST:-$here/../Cargo.toml}"
sizes="train_step/adam_b60:60 train_step/adam_b1024:1024 train_epoch/adam_b60:60000"

if ! python3 -c 'import torch' 2>/dev/null; then
    echo "PyTorch is not installed for python3; install it with: pip install torch" >&2
    exit 1
fi

if [ -z "${SKIP_CARGO:-}" ]; then
    cargo bench --manifest-path "$manifest" --bench train_step
fi
target="$(cargo metadata --manifest-path "$manifest" --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

echo "== PyTorch =="
torch_out="$(python3 "$here/pytorch_lenet.py")"
echo "$torch_out"

echo "== pipe / PyTorch (median time per iteration) =="
printf '%-24s %12s %12s %8s %14s %14s\n' measurement pipe_ms torch_ms ratio pipe_samp/s torch_samp/s
for entry in $sizes; do
    name="${entry%%:*}"; samples="${entry##*:}"
    est="$target/criterion/$name/new/estimates.json"
    if [ ! -f "$est" ]; then echo "missing $est (run without SKIP_CARGO)" >&2; exit 1; fi
    pipe_ms="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"] / 1e6)' "$est")"
    torch_ms="$(echo "$torch_out" | awk -v n="$name" '$1 == "BENCH" && $2 == n {print $3}')"
    python3 - "$name" "$pipe_ms" "$torch_ms" "$samples" <<'PY'
import sys
name, p, t, n = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print(f"{name:<24} {p:12.3f} {t:12.3f} {p / t:8.2f} {n / p * 1e3:14.0f} {n / t * 1e3:14.0f}")
PY
done
