#!/usr/bin/env python3
"""PyTorch side of bench/compare_families.sh: times one training step of each model that
`examples/family_step.rs` wrote (its layer program as JSON), with the same optimiser, batch,
warm-up and step count, built one of two ways (MODEL):

- `standard`: the hand-written torch.nn module a PyTorch user would write
  (bench/torch_models.py), checked to have the program's parameter count;
- `program`: built from pipe's layer program by bench/torch_check.py's `Program`.

    python3 bench/torch_family_step.py DIR THREADS BATCH STEPS MODEL NAME...

Prints `BENCH <name> <ms per step>`.
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_check import Program  # noqa: E402
from torch_models import standard  # noqa: E402


def main():
    folder, threads, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    how = sys.argv[5]
    if how not in ("standard", "program"):
        sys.exit(f"MODEL is `standard` or `program`, not `{how}`")
    for name in sys.argv[6:]:
        program = json.load(open(f"{folder}/{name}.json"))
        model = Program(program["ops"])
        if how == "standard":
            built, model = model, standard(name)
            count = [sum(p.numel() for p in m.parameters()) for m in (built, model)]
            if count[0] != count[1]:
                sys.exit(f"{name}: the hand-written model has {count[1]} parameters, pipe's {count[0]}")
        model.train()
        params = list(model.parameters())
        if name.startswith("lenet"):
            opt = torch.optim.Adam(params, lr=1.2e-3)
        else:
            opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        c, h, w = program["input"]
        x = torch.randn(batch, c, h, w)
        classes = [op for op in program["ops"] if op["op"] == "linear"][-1]["d_out"]
        y = torch.randint(0, classes, (batch,))

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()

        for _ in range(2):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        ms = (time.perf_counter() - t0) * 1e3 / steps
        print(f"BENCH {name} {ms:.2f}", flush=True)


if __name__ == "__main__":
    main()
