"""A user's own training loop, in numpy: trains the MLP of its `model` input with plain SGD on
the `data` input's training split, keeps pruned weights at zero, and reports its own test
accuracy. tests/command.rs checks that pipe's `evaluate` of the model it saves agrees."""
import os
import sys

import numpy as np

# pipe_torch.py beside the script (tests/command.rs copies it there), or the repository's.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "..", "python")]
import pipe_torch  # noqa: E402


def forward(state, layers, x):
    h = x.reshape(len(x), -1)
    acts = [h]
    for i, name in enumerate(layers):
        h = h @ state[name + ".weight"].T + state[name + ".bias"]
        if i + 1 < len(layers):
            h = np.maximum(h, np.float32(0))
        acts.append(h)
    return acts


def softmax_loss(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
    return loss, p


def main():
    ctx = pipe_torch.context()
    model = pipe_torch.load_model(ctx.input("model"))
    data = pipe_torch.load_splits(ctx.input("data"))
    lr = np.float32(ctx.params.get("lr", 0.1))
    steps = int(ctx.params.get("iterations", 50))
    batch = int(ctx.params.get("batch", 32))
    state = {k: v.astype(np.float32).copy() for k, v in model.state.items()}
    layers = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda n: int(n[2:]))
    mask = {k: v.astype(np.float32) for k, v in model.mask.items()}
    for k, m in mask.items():
        state[k] *= m
    x, y = data.split("train")
    rng = np.random.default_rng(ctx.seed)
    curve = []
    for step in range(steps):
        idx = rng.integers(0, len(x), batch)
        acts = forward(state, layers, x[idx])
        loss, p = softmax_loss(acts[-1], y[idx])
        g = p
        g[np.arange(batch), y[idx]] -= 1
        g /= batch
        for i in reversed(range(len(layers))):
            name = layers[i]
            gw = g.T @ acts[i]
            gb = g.sum(axis=0)
            if i > 0:
                g = (g @ state[name + ".weight"]) * (acts[i] > 0)
            state[name + ".weight"] -= lr * gw.astype(np.float32)
            state[name + ".bias"] -= lr * gb.astype(np.float32)
        for k, m in mask.items():
            state[k] *= m
        if (step + 1) % 10 == 0:
            pipe_torch.progress(step + 1, steps, f"loss {loss:.3f}")
            curve.append({"iteration": step + 1, "train_loss": float(loss), "val_loss": None,
                          "val_acc": None, "test_loss": float(loss), "test_acc": 0.0})
    xt, yt = data.split("test")
    test_loss, p = softmax_loss(forward(state, layers, xt)[-1], yt)
    acc = float((p.argmax(axis=1) == yt).mean())
    print(f"test accuracy {acc:.4f}")
    pipe_torch.write_metrics(ctx.out, {"accuracy": acc, "loss": float(test_loss),
                                       "train": {"steps": steps}})
    pipe_torch.write_curve(ctx.out, curve)
    pipe_torch.save_model(ctx.out, like=model, state=state, mask=model.mask or None,
                          step=model.step + steps, seed=ctx.seed)


if __name__ == "__main__":
    main()
