"""Writes metrics computed from its parameters and its inputs' metrics, and a marker line in
its log: the fast script of tests/command.rs (keys, reports, claims, diff)."""
import json
import os
import sys

# pipe_torch.py beside the script (tests/command.rs copies it there), or the repository's.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "..", "python")]
import pipe_torch  # noqa: E402

ctx = pipe_torch.context()
x = ctx.params["x"]
upstream = sum(i.metrics.get("score", 0) for ins in ctx.inputs.values() for i in ins)
print(f"metrics.py ran with x={x} seed={ctx.seed} threads={ctx.threads}")
with open(os.path.join(ctx.out, "note.txt"), "w") as f:
    f.write(json.dumps({"x": x, "stage": ctx.stage}))
pipe_torch.write_metrics(ctx.out, {"score": 2 * x + upstream, "nested": {"seed": ctx.seed}})
