#!/usr/bin/env python3
"""PyTorch reference for benches/train_step.rs: LeNet-300-100, Adam, CPU.

Measurements (same names as the criterion benches):
  train_step/adam_b60     one Adam step at batch 60
  train_step/adam_b1024   one Adam step at batch 1024
  train_epoch/adam_b60    one epoch over 60,000 synthetic samples at batch 60
                          (per-epoch randperm, batch gathered by indexing)

Warm-up excluded; each figure is the median of repeated timed blocks.
Prints one line per measurement:  BENCH <name> <ms_per_iter> <samples_per_s>
"""
import os
import statistics
import time

import torch
import torch.nn as nn

torch.set_num_threads(os.cpu_count() or 1)
torch.manual_seed(0)


def lenet():
    return nn.Sequential(
        nn.Linear(784, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )


def make_step(model, opt, loss_fn):
    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def bench_step(batch, warmup=50, blocks=30, per_block=None):
    model = lenet()
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    step = make_step(model, opt, nn.CrossEntropyLoss())
    x = torch.randn(batch, 784)
    y = torch.randint(0, 10, (batch,))
    for _ in range(warmup):
        step(x, y)
    per_block = per_block or max(5, 2000 // batch)
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per_block):
            step(x, y)
        times.append((time.perf_counter() - t0) / per_block)
    return statistics.median(times)


def bench_epoch(n=60_000, batch=60, repeats=10):
    model = lenet()
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    step = make_step(model, opt, nn.CrossEntropyLoss())
    g = torch.Generator().manual_seed(1)
    data = torch.randn(n, 784, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)

    def epoch():
        perm = torch.randperm(n, generator=g)
        for b in range(n // batch):
            idx = perm[b * batch:(b + 1) * batch]
            step(data[idx], labels[idx])

    epoch()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in (60, 1024):
        s = bench_step(batch)
        print(f"BENCH train_step/adam_b{batch} {s * 1e3:.4f} {batch / s:.0f}", flush=True)
    s = bench_epoch()
    print(f"BENCH train_epoch/adam_b60 {s * 1e3:.4f} {60_000 / s:.0f}", flush=True)


if __name__ == "__main__":
    main()
