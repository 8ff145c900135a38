#!/usr/bin/env python3
"""Loads checkpoints written by `pipe` into plain `torch.nn` modules and evaluates them.

For each checkpoint stem given, the script reads the side-car `<stem>.json` (the model's
layer program), builds the equivalent `torch.nn` module with the same parameter names, loads
`<stem>.safetensors` with `safetensors.torch.load_file` and `load_state_dict(strict=True)`,
evaluates it on the full test split of an IDX dataset (MNIST or Fashion-MNIST), and compares
with the accuracy `pipe` recorded (`--expect`). It exits 1 when any model is off by more
than `--tolerance` points.

    python3 bench/torch_check.py --data data/fashion-mnist --mean 0.2860 --std 0.3530 \
        CKPT_STEM=EXPECTED_ACCURACY_PCT ...
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

# The layer-program interpreter lives in one place: python/pipe_torch.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from pipe_torch import Program  # noqa: E402


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with the four IDX .gz files")
    ap.add_argument("--mean", type=float, required=True)
    ap.add_argument("--std", type=float, required=True)
    ap.add_argument("--tolerance", type=float, default=0.1, help="points of accuracy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("models", nargs="+", help="CHECKPOINT_STEM=EXPECTED_ACCURACY_PCT")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    raw = read_idx(f"{args.data}/t10k-images-idx3-ubyte.gz")
    labels = torch.from_numpy(read_idx(f"{args.data}/t10k-labels-idx1-ubyte.gz").astype(np.int64))

    def inputs(h, w):
        # `pad_to` zero-pads the u8 images, centred, before normalisation.
        n, h0, w0 = raw.shape
        img = np.zeros((n, h, w), dtype=np.float32)
        top, left = (h - h0) // 2, (w - w0) // 2
        img[:, top:top + h0, left:left + w0] = raw / 255.0
        return torch.from_numpy((img - args.mean) / args.std).unsqueeze(1)

    failed = 0
    for item in args.models:
        stem, expect = item.rsplit("=", 1)
        side = json.load(open(f"{stem}.json"))
        program = side["program"]
        model = Program(program["ops"])
        state = load_file(f"{stem}.safetensors")
        model.load_state_dict(state, strict=True)
        model.eval()
        c, h, w = program["input"]
        x_all = inputs(h, w) if h >= 28 else inputs(28, 28)  # an MLP flattens 28×28
        correct = 0
        with torch.no_grad():
            for start in range(0, len(labels), 2000):
                x = x_all[start:start + 2000].reshape(-1, c, h, w)
                correct += (model(x).argmax(1) == labels[start:start + 2000]).sum().item()
        acc = 100.0 * correct / len(labels)
        diff = abs(acc - float(expect))
        ok = diff <= args.tolerance
        failed += not ok
        print(f"{side['spec']['arch']:>13}  torch {acc:7.3f}%  pipe {float(expect):7.3f}%  "
              f"|diff| {diff:.3f}  {'ok' if ok else 'MISMATCH'}  ({stem})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
