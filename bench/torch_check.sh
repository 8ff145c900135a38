#!/usr/bin/env bash
# The PyTorch load check of issue 8: `pipe` trains one small model of every family
# (bench/torch_check.yaml), then bench/torch_check.py loads each evaluated checkpoint with
# `safetensors.torch.load_file` into plain torch.nn modules (strict state_dict load) and
# evaluates it on the same Fashion-MNIST test split. Fails when any accuracy differs from the
# one `pipe` recorded by more than 0.1 point.
#
# Needs: python3 with torch, safetensors, numpy (`pip install torch safetensors numpy`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
pipe=target/release/pipe
$pipe run bench/torch_check.yaml
models=()
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# evaluate stage:the stage whose model it evaluated (its checkpoint is `model.*` in that
# stage's cache entry).
for pair in eval_mlp:mlp_pruned eval_convnet:convnet_pruned eval_vgg:vgg \
    eval_resnet_a:resnet_a eval_resnet_b:resnet_b eval_mobilenet:mobilenet \
    eval_resnet_c:resnet_c eval_plain:plain eval_bottleneck:bottleneck; do
    acc=$($pipe show "${pair%%:*}" --json | field '100 * d["metrics"]["accuracy"]')
    key=$($pipe show "${pair##*:}" --json | field 'd["key"]')
    models+=("cache/entries/${key:0:2}/$key/model=$acc")
done
python3 bench/torch_check.py --data data/fashion-mnist --mean 0.2860 --std 0.3530 "${models[@]}"
