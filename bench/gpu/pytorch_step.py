"""PyTorch counterpart of examples/bench_step.rs: ms per LeNet-300-100 Adam step.

Usage: python3 bench/gpu/pytorch_step.py [cuda|cpu] [batch ...]
Prints `BENCH step/b<batch> <ms per step> <samples per s>`; warm-up excluded, the device
synchronised before the clock starts and stops.
"""
import sys
import time

import torch
import torch.nn as nn

WARMUP, STEPS = 20, 200
device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
batches = [int(b) for b in sys.argv[2:]] or [60, 1024]


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


torch.manual_seed(0)
for batch in batches:
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3, eps=1e-8)
    x = torch.rand(batch, 784, device=device) - 0.5
    y = torch.arange(batch, device=device) % 10
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(WARMUP):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(STEPS):
        loss = step()
    loss.item()
    sync()
    ms = (time.perf_counter() - t0) * 1e3 / STEPS
    print(f"BENCH step/b{batch} {ms:.4f} {batch / ms * 1e3:.0f}", flush=True)
