#!/usr/bin/env python3
"""The PyTorch side of bench/e2e.sh: the work of one bench/e2e/*.yaml pipeline, written as a
PyTorch user writes it — hand-written torch.nn modules, the IDX files read into in-memory
tensors, a plain training loop, `torch.no_grad()` evaluation.

    python3 bench/torch_e2e.py CASE THREADS

CASE is one of lenet, conv2, resnet20, chain. Each evaluates the test set where the pipeline's
curve does (before the first step, every `eval_every` steps, at the end), so both sides
compute the same numbers; the pipeline's separate `evaluate` stage asks for the last of them
again, which a script would not recompute. Prints one line per evaluation and
`RESULT <case> <final test accuracy>`.
"""

import gzip
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import ConvNet, LeNet300100, ResNet  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def load(name, mean, std, pad=0):
    folder = os.path.join(ROOT, "data", name)

    def split(prefix):
        x = read_idx(f"{folder}/{prefix}-images-idx3-ubyte.gz").float().div_(255)
        x = x.sub_(mean).div_(std).unsqueeze(1)
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
        y = read_idx(f"{folder}/{prefix}-labels-idx1-ubyte.gz").long()
        return x, y

    return split("train"), split("t10k")


def balanced_subset(x, y, n, classes=10):
    idx = torch.cat([(y == c).nonzero().flatten()[: n // classes] for c in range(classes)])
    return x[idx], y[idx]


def evaluate(model, x, y, batch=1000):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i: i + batch])
            loss += F.cross_entropy(out, y[i: i + batch], reduction="sum").item()
            correct += (out.argmax(1) == y[i: i + batch]).sum().item()
    model.train()
    return correct / len(x), loss / len(x)


def train(model, opt, data, test, iterations, batch, eval_every, masks=None, lr_of=None):
    x, y = data
    g = torch.Generator().manual_seed(0)
    acc, _ = evaluate(model, *test)
    print(f"step 0: test accuracy {acc:.4f}")
    perm, pos = torch.randperm(len(x), generator=g), 0
    for it in range(iterations):
        if pos + batch > len(x):
            perm, pos = torch.randperm(len(x), generator=g), 0
        idx = perm[pos: pos + batch]
        pos += batch
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        if masks:
            with torch.no_grad():
                for p, m in masks:
                    p.mul_(m)
        done = it + 1
        if (eval_every and done % eval_every == 0) or done == iterations:
            acc, _ = evaluate(model, *test)
            print(f"step {done}: loss {loss.item():.4f} test accuracy {acc:.4f}")
    return acc


def magnitude_masks(model, fraction):
    """Per layer, the `fraction` of weights (not biases) with the smallest magnitude removed."""
    masks = []
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            k = int(round(fraction * p.numel()))
            threshold = p.detach().abs().flatten().kthvalue(k).values
            masks.append((p, (p.detach().abs() > threshold).float()))
    with torch.no_grad():
        for p, m in masks:
            p.mul_(m)
    return masks


def main():
    case, threads = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if case in ("lenet", "chain"):
        data, test = load("mnist", 0.1307, 0.3081)
        model = LeNet300100()
        opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
        if case == "lenet":
            acc = train(model, opt, data, test, 2000, 60, 1000)
        else:
            train(model, opt, data, test, 1000, 60, 0)
            masks = magnitude_masks(model, 0.2)
            opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
            acc = train(model, opt, data, test, 1000, 60, 0, masks)
    elif case == "conv2":
        data, test = load("fashion-mnist", 0.2860, 0.3530)
        model = ConvNet([64, 64, "M"], [256, 256], (1, 28, 28))
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        acc = train(model, opt, data, test, 1500, 60, 500)
    elif case == "resnet20":
        data, test = load("fashion-mnist", 0.2860, 0.3530, pad=2)
        data = balanced_subset(*data, 10_000)
        model = ResNet(20, channels=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        acc = train(model, opt, data, test, 156, 128, 0)
    else:
        sys.exit(f"unknown case {case}")
    print(f"RESULT {case} {acc:.4f}")


if __name__ == "__main__":
    main()
