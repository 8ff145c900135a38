#!/usr/bin/env python3
"""Trains LeNet-300-100 on MNIST in plain PyTorch: a pipe `command` stage.

The network is an ordinary hand-written `torch.nn.Module`; pipe only hands it its starting
weights and mask (`inputs: {model: ...}`, from `init`, `rewind` or `reinit`), the data splits
(`inputs: {data: ...}`, a `data_splits` stage) and its parameters, and takes back the trained
model, its metrics and its learning curve. Pruned weights (mask 0) stay exactly zero.

Parameters (`params:` in the pipeline): `lr` (Adam's learning rate, 1.2e-3), `batch` (60),
`iterations` (2000), `eval_every` (250: iterations between points of the learning curve).

Outside pipe it fails at once, naming the missing variable; see examples/pytorch/README.md.
"""

import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import pipe_torch  # noqa: E402


class LeNet300100(nn.Module):
    """LeNet-300-100: 784 → 300 → 100 → 10 with ReLU. The layer names (fc1, fc2, fc3) are the
    ones pipe's `mlp` family uses, so pipe's checkpoints load with strict=True."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@torch.no_grad()
def evaluate(net, x, y, batch=2000):
    """(mean cross-entropy, accuracy as a fraction) over the whole split."""
    net.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        logits = net(x[i:i + batch])
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    net.train()
    return loss / len(y), correct / len(y)


def main():
    ctx = pipe_torch.context()
    pipe_torch.set_threads(ctx)
    torch.manual_seed(ctx.seed)
    device = torch.device(ctx.device)
    lr = float(ctx.param("lr", 1.2e-3))
    batch = int(ctx.param("batch", 60))
    iterations = int(ctx.param("iterations", 2000))
    eval_every = int(ctx.param("eval_every", 250))

    # The starting point: weights and mask as pipe's init / rewind / reinit wrote them.
    model_in = pipe_torch.load_model(ctx.input("model"))
    net = LeNet300100().to(device)
    net.load_state_dict(pipe_torch.to_torch_state(model_in, device), strict=True)
    masks = pipe_torch.torch_masks(model_in, device)
    pipe_torch.apply_mask(net, masks)

    # The samples pipe's own train and evaluate use, normalised as pipe normalises them.
    data = pipe_torch.load_splits(ctx.input("data"))
    splits = {}
    for name in ("train", "val", "test"):
        if name in data.names and data.n(name) > 0:
            x, y = data.split(name)
            splits[name] = (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
    x_train, y_train = splits["train"]
    n = len(y_train)
    print(f"{ctx.stage}: {model_in.density():.1%} of the weights remain; train on {n} samples, "
          f"{iterations} iterations of {batch}, lr {lr}, seed {ctx.seed}, {ctx.threads} threads, {device}",
          flush=True)

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(ctx.seed)
    order, pos = torch.randperm(n, generator=gen), 0
    curve, losses, start = [], [], time.time()

    def point(iteration):
        val_loss, val_acc = evaluate(net, *splits["val"]) if "val" in splits else (None, None)
        test_loss, test_acc = evaluate(net, *splits["test"])
        train_loss = sum(losses) / len(losses) if losses else evaluate(net, x_train, y_train)[0]
        losses.clear()
        curve.append({"iteration": iteration, "train_loss": train_loss, "val_loss": val_loss,
                      "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc})
        return test_loss, test_acc

    point(0)
    net.train()
    for it in range(1, iterations + 1):
        if pos + batch > n:                      # a new epoch: reshuffle
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch].to(device)
        pos += batch
        loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        pipe_torch.apply_mask(net, masks)        # pruned weights stay zero
        losses.append(loss.item())
        if it % eval_every == 0 or it == iterations:
            test_loss, test_acc = point(it)
            pipe_torch.progress(it, iterations, f"test acc {test_acc:.4f} ({time.time() - start:.0f}s)")

    test_loss, test_acc = curve[-1]["test_loss"], curve[-1]["test_acc"]
    print(f"{ctx.stage}: test accuracy {test_acc:.4f}, loss {test_loss:.4f}", flush=True)
    pipe_torch.write_metrics(ctx.out, {"accuracy": test_acc, "loss": test_loss,
                                       "iterations": iterations})
    pipe_torch.write_curve(ctx.out, curve)
    pipe_torch.save_model(ctx.out, like=model_in, state=net.state_dict(),
                          mask=model_in.mask or None, step=(model_in.step or 0) + iterations)


if __name__ == "__main__":
    main()
