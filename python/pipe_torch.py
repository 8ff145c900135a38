"""The Python side of pipe's ``command`` stages: read what pipe hands a script, write what it
reads back.

A ``command`` stage runs your program with a few environment variables (``PIPE_OUT``,
``PIPE_PARAMS``, ``PIPE_INPUTS``, ``PIPE_SEED``, ``PIPE_THREADS``, ``PIPE_DEVICE``,
``PIPE_STAGE``; see the main README, "Your own code"). This module turns them into Python
objects, reads pipe's artifacts (models from ``init``/``train``/``prune``/``rewind``/
``reinit``, the splits of a ``data_splits`` stage) and writes the files pipe collects from
``$PIPE_OUT`` (``metrics.json``, ``curve.json``, a model).

Its core needs only the standard library, numpy and safetensors; torch is imported only by
the torch helpers at the end (``build_module``, ``to_torch_state``, ``torch_masks``,
``apply_mask``, ``set_threads``, ``Program``), so ``import pipe_torch`` works without it.

A training script, in brief::

    import torch, pipe_torch

    ctx = pipe_torch.context()                 # fails clearly outside a pipe stage
    pipe_torch.set_threads(ctx)
    model_in = pipe_torch.load_model(ctx.input("model"))
    data = pipe_torch.load_splits(ctx.input("data"))
    x, y = data.split("train")                 # float32 [n, c, h, w] exactly as pipe's, int64 [n]

    net = pipe_torch.build_module(model_in)    # or your own nn.Module with pipe's names
    masks = pipe_torch.torch_masks(model_in)
    opt = torch.optim.Adam(net.parameters(), lr=ctx.params["lr"])
    for step in range(ctx.params["iterations"]):
        ...                                    # forward, backward, opt.step()
        pipe_torch.apply_mask(net, masks)      # pruned weights stay zero
        pipe_torch.progress(step + 1, ctx.params["iterations"])

    pipe_torch.write_metrics(ctx.out, {"accuracy": 0.98, "loss": 0.07})
    pipe_torch.save_model(ctx.out, like=model_in, state=net.state_dict(),
                          mask=model_in.mask, step=ctx.params["iterations"])

Put ``python/`` (this file's folder) on ``sys.path`` or ``PYTHONPATH`` to import it, and name
this file in the stage's ``deps`` so that a change to it re-runs the stage.
"""

import json
import math
import numbers
import os
import warnings
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

__all__ = [
    "Context", "Input", "Model", "Splits",
    "context", "load_model", "save_model", "load_splits",
    "write_metrics", "write_curve", "progress",
    "build_module", "to_torch_state", "torch_masks", "apply_mask", "set_threads",
]  # and `Program` (defined on first access, importing torch)

FORMAT_VERSION = 2
"""The ``format_version`` of the model side-cars this module writes."""

MODEL_TENSORS = "model.safetensors"
MODEL_MASK = "model.mask.safetensors"
MODEL_JSON = "model.json"
DATA_JSON = "data.json"
METRICS_JSON = "metrics.json"
CURVE_JSON = "curve.json"

PROGRESS_PREFIX = "pipe-progress:"

_CURVE_COLUMNS = ("iteration", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc")


def _is_nbt(name):
    """Batch norm's step counter: pipe ignores it (torch adds it back when it loads)."""
    return name == "num_batches_tracked" or name.endswith(".num_batches_tracked")


# ---------------------------------------------------------------------------------------------
# The stage's environment
# ---------------------------------------------------------------------------------------------

class Input:
    """One input entry of a stage: an artifact of the stage that a role of this one names.

    Attributes: ``name`` (the producing stage's expanded name, e.g. ``prune`` or
    ``imp.3.train``), ``kind`` (its kind: ``init``, ``data_splits``, ``command``, ...), ``key``
    (its cache key), ``dir`` (``Path`` of the entry's folder, read-only), ``files`` (the file
    names in it), ``metrics`` and ``params`` (the producing stage's metrics and parameters).
    """

    def __init__(self, role, raw):
        if not isinstance(raw, dict):
            raise ValueError(f"PIPE_INPUTS: an input of role `{role}` is not an object: {raw!r}")
        missing = [k for k in ("name", "kind", "key", "dir", "files") if k not in raw]
        if missing:
            raise ValueError(
                f"PIPE_INPUTS: an input of role `{role}` lacks {', '.join(missing)}: {raw!r}")
        self.role = role
        self.name = raw["name"]
        self.kind = raw["kind"]
        self.key = raw["key"]
        self.dir = Path(raw["dir"])
        self.files = list(raw["files"])
        self.metrics = dict(raw.get("metrics") or {})
        self.params = dict(raw.get("params") or {})

    def path(self, filename):
        """The path of ``filename`` in this entry; ``FileNotFoundError`` if the entry lacks it."""
        if filename not in self.files:
            raise FileNotFoundError(
                f"input `{self.name}` (role `{self.role}`, kind {self.kind}) has no file "
                f"`{filename}`; it has: {', '.join(self.files) or 'nothing'}")
        return self.dir / filename

    def has(self, filename):
        """Whether the entry holds ``filename``."""
        return filename in self.files

    def __repr__(self):
        return f"Input(role={self.role!r}, name={self.name!r}, kind={self.kind!r}, dir={str(self.dir)!r})"


class Context:
    """What pipe hands a ``command`` stage (build it with :func:`context`).

    Attributes: ``out`` (``Path`` of ``$PIPE_OUT``, the empty folder whose contents become the
    stage's artifact), ``params`` (the stage's ``params`` as a dict), ``inputs`` (dict role →
    list of :class:`Input`), ``seed`` (``$PIPE_SEED``), ``threads`` (``$PIPE_THREADS``: how many
    threads to compute on), ``device`` (``cpu`` or ``cuda:N``: a ``torch.device`` accepts it as
    is) and ``stage`` (the stage's name).
    """

    def __init__(self, out, params, inputs, seed, threads, device, stage):
        self.out = Path(out)
        self.params = params
        self.inputs = inputs
        self.seed = seed
        self.threads = threads
        self.device = device
        self.stage = stage

    def input(self, role):
        """The single input of ``role``; an error when the role is missing or has several."""
        if role not in self.inputs:
            have = ", ".join(sorted(self.inputs)) or "none"
            raise KeyError(
                f"stage `{self.stage}` has no input role `{role}` (its roles: {have}); "
                f"add it to the stage's `inputs:` in the pipeline")
        items = self.inputs[role]
        if len(items) != 1:
            names = ", ".join(i.name for i in items) or "no stage"
            raise ValueError(
                f"stage `{self.stage}`: role `{role}` has {len(items)} inputs ({names}); "
                f"use ctx.inputs[{role!r}] for a list")
        return items[0]

    def param(self, name, default=None, required=False):
        """``params[name]``, or ``default``; with ``required=True`` an error when it is absent."""
        if name in self.params:
            return self.params[name]
        if required:
            raise KeyError(
                f"stage `{self.stage}` has no parameter `{name}`; set it under the stage's "
                f"`params:` in the pipeline (it has: {', '.join(sorted(self.params)) or 'none'})")
        return default

    def __repr__(self):
        return (f"Context(stage={self.stage!r}, out={str(self.out)!r}, seed={self.seed}, "
                f"threads={self.threads}, device={self.device!r}, "
                f"inputs={ {r: [i.name for i in v] for r, v in self.inputs.items()} }, "
                f"params={self.params!r})")


def _env(name):
    value = os.environ.get(name)
    if value is None or value == "":
        raise RuntimeError(
            f"{name} is not set: this script expects to run as a pipe `command` stage "
            f"(`pipe run PIPELINE.yaml`), which sets PIPE_OUT, PIPE_PARAMS, PIPE_INPUTS, "
            f"PIPE_SEED, PIPE_THREADS, PIPE_DEVICE and PIPE_STAGE")
    return value


def _env_json(name):
    path = Path(_env(name))
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise RuntimeError(f"{name}={path}: cannot read it: {e}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}={path}: not JSON: {e}") from e


def _env_int(name, minimum):
    text = _env(name)
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} is below {minimum}")
    return value


def context():
    """Reads the stage's environment into a :class:`Context`.

    Raises ``RuntimeError`` naming the variable when a ``PIPE_*`` variable is missing (the
    script was not started by pipe) or a file it names cannot be read, and ``ValueError`` when
    a value is malformed.
    """
    out = Path(_env("PIPE_OUT"))
    if not out.is_dir():
        raise RuntimeError(f"PIPE_OUT={out} is not a folder")
    params = _env_json("PIPE_PARAMS")
    if not isinstance(params, dict):
        raise ValueError(f"PIPE_PARAMS={os.environ['PIPE_PARAMS']}: holds no JSON object")
    raw_inputs = _env_json("PIPE_INPUTS")
    if not isinstance(raw_inputs, dict):
        raise ValueError(f"PIPE_INPUTS={os.environ['PIPE_INPUTS']}: holds no JSON object")
    inputs = {}
    for role, items in raw_inputs.items():
        if not isinstance(items, list):
            items = [items]
        inputs[role] = [Input(role, item) for item in items]
    return Context(
        out=out,
        params=params,
        inputs=inputs,
        seed=_env_int("PIPE_SEED", 0),
        threads=_env_int("PIPE_THREADS", 1),
        device=_env("PIPE_DEVICE"),
        stage=_env("PIPE_STAGE"),
    )


def _folder(src, what):
    """An Input's folder, or a folder path."""
    if isinstance(src, Input):
        return src.dir
    if isinstance(src, (str, os.PathLike)):
        return Path(src)
    raise TypeError(f"{what}: expected an Input (ctx.input(role)) or a folder path, not {type(src).__name__}")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

class Model:
    """A pipe model artifact in memory.

    Attributes:
        spec: the architecture as ``init`` was given it (``{"arch": "mlp", "widths": [...]}``).
        program: the layer program pipe compiled the spec to, as stored in ``model.json``: a
            dict ``{"input": [c, h, w], "ops": [...], "output": NAME}``; ``ops`` is the list.
        json: the whole side-car (``model.json``) as a dict.
        state: dict name → numpy array (float32, PyTorch layouts and names:
            ``fc1.weight`` is ``[out, in]``), ``num_batches_tracked`` left out.
        mask: dict name → numpy uint8 array of 0/1, one per prunable weight (same name and
            shape as the weight); empty when the model has no mask file (dense).
        step, seed: the side-car's ``step`` and ``seed`` (``None`` when absent).
        dir: the folder it was read from.
    """

    def __init__(self, spec, program, json_, state, mask, step=None, seed=None, dir=None):
        self.spec = spec
        self.program = program
        self.json = json_
        self.state = state
        self.mask = mask
        self.step = step
        self.seed = seed
        self.dir = dir

    @property
    def ops(self):
        """The program's list of layer operations."""
        return _ops_of(self.program)

    @property
    def input_shape(self):
        """``[c, h, w]`` the program takes (an MLP's is ``[1, 1, d_in]``; it flattens)."""
        return list(self.program["input"]) if isinstance(self.program, dict) else None

    def density(self):
        """Fraction of the masked weights that survive (1.0 without a mask)."""
        total = sum(m.size for m in self.mask.values())
        return float(sum(int(m.sum()) for m in self.mask.values()) / total) if total else 1.0

    def __repr__(self):
        return (f"Model(arch={self.spec.get('arch') if isinstance(self.spec, dict) else self.spec!r}, "
                f"tensors={len(self.state)}, masks={len(self.mask)}, step={self.step}, seed={self.seed})")


def _ops_of(program):
    if isinstance(program, dict):
        return program["ops"]
    return program


def load_model(src):
    """Reads a model artifact (``model.safetensors``, ``model.json``, optional
    ``model.mask.safetensors``) from an :class:`Input` or a folder into a :class:`Model`."""
    d = _folder(src, "load_model")
    side_path = d / MODEL_JSON
    tensors_path = d / MODEL_TENSORS
    for p in (side_path, tensors_path):
        if not p.is_file():
            what = f"input `{src.name}` (kind {src.kind})" if isinstance(src, Input) else str(d)
            raise FileNotFoundError(f"{what} holds no model: {p.name} is missing")
    with open(side_path, encoding="utf-8") as f:
        side = json.load(f)
    if "spec" not in side:
        raise ValueError(f"{side_path}: no `spec`; it is not a pipe model side-car")
    state = {k: v for k, v in load_file(str(tensors_path)).items() if not _is_nbt(k)}
    mask_path = d / MODEL_MASK
    mask = load_file(str(mask_path)) if mask_path.is_file() else {}
    return Model(
        spec=side["spec"],
        program=side.get("program"),
        json_=side,
        state=state,
        mask=mask,
        step=side.get("step"),
        seed=side.get("seed"),
        dir=d,
    )


def _to_numpy(value, name):
    """A numpy array from a numpy array, a torch tensor (detached, on the CPU) or a number."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"`{name}` is not a numeric array ({type(value).__name__})")
    return arr


def _prunable(like):
    layers = like.json.get("layers") if isinstance(like.json, dict) else None
    if layers:
        return {layer["name"] for layer in layers}
    return set(like.mask) or None


def save_model(out_dir, like, state, mask=None, step=0, seed=None):
    """Writes a model artifact into ``out_dir`` (usually ``ctx.out``) in pipe's layout.

    Args:
        out_dir: the folder (a path, or a :class:`Context` for its ``out``).
        like: the :class:`Model` whose architecture it is (its ``spec`` and ``program`` are
            copied; every tensor name and shape must be that model's).
        state: dict name → numpy array or torch tensor (``net.state_dict()`` works);
            written as float32. ``num_batches_tracked`` is left out (pipe ignores it).
        mask: optional dict name → 0/1 array or tensor (bool, integer or float), one per
            prunable weight (usually ``like.mask``); written as uint8 to
            ``model.mask.safetensors``. ``None`` or ``{}``: no mask file, the model is dense.
        step: the training step the weights are at (``model.json``'s ``step``).
        seed: the seed to record; ``like.seed`` when ``None``.

    Returns the folder. Raises ``ValueError`` when a name or shape differs from ``like``'s.
    """
    out = Path(out_dir.out if isinstance(out_dir, Context) else out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(like, Model):
        raise TypeError("save_model: `like` must be the Model whose architecture is kept (load_model(...))")

    tensors = {}
    for name, value in state.items():
        if _is_nbt(name):
            continue
        tensors[name] = np.ascontiguousarray(_to_numpy(value, name), dtype=np.float32)
    expected = {k: tuple(v.shape) for k, v in like.state.items()}
    problems = []
    for name in sorted(set(expected) - set(tensors)):
        problems.append(f"missing `{name}` {list(expected[name])}")
    for name in sorted(set(tensors) - set(expected)):
        problems.append(f"unexpected `{name}` {list(tensors[name].shape)}")
    for name in sorted(set(tensors) & set(expected)):
        if tuple(tensors[name].shape) != expected[name]:
            problems.append(f"`{name}` has shape {list(tensors[name].shape)}, the model's is {list(expected[name])}")
    if problems:
        raise ValueError("save_model: the state is not the architecture of `like`: " + "; ".join(problems))
    for name, arr in tensors.items():
        if not np.all(np.isfinite(arr)):
            warnings.warn(f"save_model: `{name}` holds NaN or infinite values", RuntimeWarning, stacklevel=2)

    masks = None
    if mask:  # None or {}: a dense model, no mask file
        masks = {}
        prunable = _prunable(like)
        for name, value in mask.items():
            arr = _to_numpy(value, name)
            if name not in tensors:
                raise ValueError(f"save_model: mask `{name}` names no tensor of the model")
            if prunable is not None and name not in prunable:
                raise ValueError(f"save_model: `{name}` is not a prunable weight (those are: {', '.join(sorted(prunable))})")
            if tuple(arr.shape) != tuple(tensors[name].shape):
                raise ValueError(f"save_model: mask `{name}` has shape {list(arr.shape)}, the weight's is {list(tensors[name].shape)}")
            if not np.all((arr == 0) | (arr == 1)):
                raise ValueError(f"save_model: mask `{name}` holds values other than 0 and 1")
            m = np.ascontiguousarray(arr, dtype=np.uint8)
            pruned_nonzero = int(np.count_nonzero(tensors[name][m == 0]))
            if pruned_nonzero:
                warnings.warn(
                    f"save_model: {pruned_nonzero} pruned weights of `{name}` are not zero "
                    f"(apply the mask after each optimiser step: apply_mask)", RuntimeWarning, stacklevel=2)
            masks[name] = m

    meta = {"format_version": str(FORMAT_VERSION)}
    save_file(tensors, str(out / MODEL_TENSORS), metadata=meta)
    if masks is not None:
        save_file(masks, str(out / MODEL_MASK), metadata=meta)
    side = {
        "format_version": FORMAT_VERSION,
        "spec": like.spec,
        "program": like.program,
        "step": int(step),
    }
    if like.program is None:
        del side["program"]
    seed = like.seed if seed is None else seed
    if seed is not None:
        side["seed"] = int(seed)
    with open(out / MODEL_JSON, "w", encoding="utf-8") as f:
        json.dump(side, f, indent=2)
        f.write("\n")
    return out


# ---------------------------------------------------------------------------------------------
# Data splits
# ---------------------------------------------------------------------------------------------

class Splits:
    """The splits a ``data_splits`` stage wrote: the samples pipe's ``train`` and ``evaluate``
    see, as bytes, with the normalisation to apply.

    Attributes: ``dataset`` (name), ``classes``, ``shape`` (``[c, h, w]``), ``mean`` and ``std``
    (float32 arrays, one value per channel), ``names`` (the splits listed), ``json`` (the whole
    ``data.json``), ``dir``.
    """

    def __init__(self, meta, d):
        self.json = meta
        self.dir = Path(d)
        self.dataset = meta.get("dataset")
        self.classes = int(meta["classes"])
        self.shape = [int(v) for v in meta["shape"]]
        norm = meta["normalization"]
        # Parsed as f64 from the shortest f32 text pipe writes, then rounded to the same f32.
        self.mean = np.array([np.float32(v) for v in norm["mean"]], dtype=np.float32)
        self.std = np.array([np.float32(v) for v in norm["std"]], dtype=np.float32)
        c = self.shape[0]
        if self.mean.size not in (1, c) or self.std.size not in (1, c):
            raise ValueError(f"{self.dir / DATA_JSON}: {self.mean.size} means and {self.std.size} stds for {c} channels")
        self._splits = meta["splits"]
        self.names = list(self._splits)

    def _entry(self, split):
        if split not in self._splits:
            raise KeyError(f"no split `{split}` in {self.dir / DATA_JSON} (it has: {', '.join(self.names)})")
        return self._splits[split]

    def n(self, split):
        """The number of samples in ``split`` (0 for an empty one, e.g. ``val`` with val_size 0)."""
        return int(self._entry(split)["n"])

    def raw(self, split):
        """``(images, labels)`` as stored: uint8 ``[n, c, h, w]`` and uint8 ``[n]``."""
        entry = self._entry(split)
        if int(entry["n"]) == 0 or "file" not in entry:
            return (np.zeros([0] + self.shape, dtype=np.uint8), np.zeros([0], dtype=np.uint8))
        t = load_file(str(self.dir / entry["file"]))
        images, labels = t["images"], t["labels"]
        if list(images.shape[1:]) != self.shape or images.shape[0] != int(entry["n"]) or labels.shape != (images.shape[0],):
            raise ValueError(f"{entry['file']}: images {list(images.shape)} and labels {list(labels.shape)} do not match data.json")
        return images, labels

    def normalize(self, images):
        """uint8 ``[n, c, h, w]`` → float32, exactly as pipe: ``(images / 255 - mean[c]) / std[c]``
        in float32, dividing first."""
        x = np.asarray(images).astype(np.float32) / np.float32(255)
        c = self.shape[0]
        mean = np.broadcast_to(self.mean, (c,)).reshape(1, c, 1, 1)
        std = np.broadcast_to(self.std, (c,)).reshape(1, c, 1, 1)
        x -= mean
        x /= std
        return x

    def split(self, name):
        """``(x, y)`` of a split: x float32 ``[n, c, h, w]`` normalised as pipe does, y int64 ``[n]``."""
        images, labels = self.raw(name)
        return self.normalize(images), labels.astype(np.int64)

    def __repr__(self):
        sizes = ", ".join(f"{s}={self.n(s)}" for s in self.names)
        return f"Splits({self.dataset}, classes={self.classes}, shape={self.shape}, {sizes})"


def load_splits(src):
    """Reads a ``data_splits`` artifact (``data.json`` and ``<split>.safetensors``) from an
    :class:`Input` or a folder into a :class:`Splits`."""
    d = _folder(src, "load_splits")
    path = d / DATA_JSON
    if not path.is_file():
        what = f"input `{src.name}` (kind {src.kind})" if isinstance(src, Input) else str(d)
        raise FileNotFoundError(f"{what} holds no data splits: {DATA_JSON} is missing (a `data_splits` stage writes it)")
    with open(path, encoding="utf-8") as f:
        return Splits(json.load(f), d)


# ---------------------------------------------------------------------------------------------
# Metrics, curves, progress
# ---------------------------------------------------------------------------------------------

def _number(value, where):
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 and not isinstance(value, numbers.Number):
        value = value.item()  # a 0-d torch tensor or numpy array
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where} is a boolean ({value}), not a number (write 1 or 0)")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        value = float(str(value))  # np.float32(0.9) is written 0.9, not 0.8999999761581421
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}; JSON holds finite numbers only")
        return value
    raise ValueError(f"{where} is {type(value).__name__} ({value!r}), not a number")


def _metrics_tree(value, prefix):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k or "." in k:
                raise ValueError(f"metric name {k!r} under `{prefix or '(top)'}` must be a non-empty string without dots (dots join nested names)")
            out[k] = _metrics_tree(v, f"{prefix}.{k}" if prefix else k)
        return out
    return _number(value, f"metric `{prefix}`")


def _out_path(out, filename):
    d = Path(out.out if isinstance(out, Context) else out)
    return d / filename


def write_metrics(out, metrics):
    """Writes ``metrics.json`` in ``out`` (a folder or a :class:`Context`): the stage's metrics.

    ``metrics`` is a dict of numbers (ints, finite floats, numpy or 0-d torch scalars) or
    nested dicts of them (``{"test": {"acc": 0.9}}`` becomes metric ``test.acc``). Raises
    ``ValueError`` on anything else (strings, lists, booleans, NaN, names with dots).
    """
    if not isinstance(metrics, dict):
        raise ValueError("write_metrics: metrics must be a dict of numbers")
    tree = _metrics_tree(metrics, "")
    path = _out_path(out, METRICS_JSON)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tree, f, indent=2, allow_nan=False)
        f.write("\n")
    return path


def write_curve(out, rows):
    """Writes ``curve.json`` in ``out``: a learning curve in ``train``'s columns.

    ``rows`` is a list of dicts, one per evaluation point: ``iteration`` (a whole number) and
    ``train_loss``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc`` (accuracies as
    fractions 0..1; a column left out is written as ``null``). Further columns of numbers (or
    ``None``) are kept, for plots with ``curve: true``. Raises ``ValueError`` on anything else.
    """
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"write_curve: row {i} is not a dict")
        if row.get("iteration") is None:
            raise ValueError(f"write_curve: row {i} has no `iteration`")
        it = _number(row["iteration"], f"curve row {i}: `iteration`")
        if not isinstance(it, int) or it < 0:
            raise ValueError(f"write_curve: row {i}: `iteration` must be a whole number >= 0, not {row['iteration']!r}")
        out_row = {"iteration": it}
        for k in list(_CURVE_COLUMNS[1:]) + [k for k in row if k not in _CURVE_COLUMNS]:
            if not isinstance(k, str) or not k:
                raise ValueError(f"write_curve: row {i}: column name {k!r} is not a string")
            v = row.get(k)
            out_row[k] = None if v is None else float(_number(v, f"curve row {i}: `{k}`"))
        clean.append(out_row)
    path = _out_path(out, CURVE_JSON)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(clean, f, indent=1, allow_nan=False)
        f.write("\n")
    return path


def progress(done, total, message=""):
    """Prints ``pipe-progress: DONE/TOTAL message`` (and flushes), which moves pipe's progress
    bar for the stage. ``done`` is clamped to ``0..total``."""
    total = max(int(total), 0)
    done = min(max(int(done), 0), total)
    text = " ".join(str(message).split())  # one line
    line = f"{PROGRESS_PREFIX} {done}/{total}"
    print(f"{line} {text}" if text else line, flush=True)


# ---------------------------------------------------------------------------------------------
# torch helpers (torch is imported here only)
# ---------------------------------------------------------------------------------------------

_PROGRAM_CLASS = None


def _program_class():
    """Defines :class:`Program` on first use, so that importing this module needs no torch."""
    global _PROGRAM_CLASS
    if _PROGRAM_CLASS is not None:
        return _PROGRAM_CLASS
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Program(nn.Module):
        """A pipe layer program as a ``torch.nn.Module``; parameter names match pipe's.

        ``Program(program)`` takes a model's ``program`` (the dict of ``model.json``) or its
        list of ``ops``. Named layers become ``nn.Conv2d``/``nn.BatchNorm2d``/``nn.Linear``
        under their (possibly dotted) names, so a pipe state dict loads with
        ``load_state_dict(strict=True)``.
        """

        def __init__(self, program):
            super().__init__()
            self.ops = _ops_of(program)
            self.input_shape = list(program["input"]) if isinstance(program, dict) else None
            self.mods = {}
            self._build(self.ops)

        def _register(self, name, module):
            # Nested names (`layer1.0.conv1`) become nested modules, as in torch's own models.
            parts = name.split(".")
            parent = self
            for p in parts[:-1]:
                if not hasattr(parent, p):
                    parent.add_module(p, nn.Module())
                parent = getattr(parent, p)
            parent.add_module(parts[-1], module)
            self.mods[name] = module

        def _build(self, ops):
            for op in ops:
                kind = op["op"]
                if kind == "conv":
                    self._register(op["name"], nn.Conv2d(
                        op["c_in"], op["c_out"], op["kernel"], stride=op["stride"],
                        padding=op["padding"], groups=op["groups"], bias=op["bias"]))
                elif kind == "batch_norm":
                    self._register(op["name"], nn.BatchNorm2d(op["channels"]))
                elif kind == "linear":
                    self._register(op["name"], nn.Linear(op["d_in"], op["d_out"], bias=op["bias"]))
                elif kind == "residual":
                    self._build(op["body"])
                    if op["shortcut"]["kind"] == "projection":
                        self._build(op["shortcut"]["ops"])

        def _run(self, ops, x):
            for op in ops:
                kind = op["op"]
                if kind in ("conv", "batch_norm", "linear"):
                    if kind == "linear":
                        x = torch.flatten(x, 1)
                    x = self.mods[op["name"]](x)
                elif kind == "relu":
                    x = F.relu(x)
                elif kind == "relu6":
                    x = F.relu6(x)
                elif kind == "max_pool":
                    x = F.max_pool2d(x, op["kernel"], op["stride"], op.get("padding", 0))
                elif kind == "global_avg_pool":
                    x = x.mean(dim=(2, 3))
                elif kind == "flatten":
                    x = torch.flatten(x, 1)
                elif kind == "residual":
                    sc = op["shortcut"]
                    if sc["kind"] == "identity":
                        skip = x
                    elif sc["kind"] == "zero_pad":
                        s = x[:, :, ::sc["stride"], ::sc["stride"]]
                        extra = sc["c_out"] - sc["c_in"]
                        skip = F.pad(s, (0, 0, 0, 0, extra // 2, extra - extra // 2))
                    else:
                        skip = self._run(sc["ops"], x)
                    x = self._run(op["body"], x) + skip
                    if op["relu"]:
                        x = F.relu(x)
                else:
                    raise ValueError(f"unknown op {kind}")
            return x

        def forward(self, x):
            return self._run(self.ops, x)

    _PROGRAM_CLASS = Program
    return Program


def __getattr__(name):
    # `pipe_torch.Program` defines the torch class on first access (PEP 562).
    if name == "Program":
        return _program_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_module(model, load=True, device="cpu"):
    """A ``torch.nn.Module`` running ``model``'s layer program, with pipe's parameter names.

    With ``load`` (the default) the model's weights are loaded with
    ``load_state_dict(strict=True)``; with ``load=False`` it keeps torch's default
    initialisation. The module is moved to ``device``.
    """
    if model.program is None:
        raise ValueError("build_module: the model's side-car has no `program`")
    net = _program_class()(model.program)
    if load:
        net.load_state_dict(to_torch_state(model), strict=True)
    return net.to(device)


def to_torch_state(model, device="cpu"):
    """The model's state as a dict of torch tensors (copies) on ``device``, for
    ``load_state_dict(..., strict=True)`` (torch fills in batch norm's ``num_batches_tracked``)."""
    import torch
    return {k: torch.from_numpy(np.array(v, copy=True)).to(device) for k, v in model.state.items()}


def torch_masks(model, device="cpu"):
    """The model's masks as float32 torch tensors on ``device`` (empty dict when dense)."""
    import torch
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32).copy()).to(device)
            for k, v in model.mask.items()}


def apply_mask(module, masks):
    """Multiplies each named parameter of ``module`` in place by its mask (under
    ``torch.no_grad()``), keeping pruned weights exactly zero. ``masks`` is a dict name →
    tensor (:func:`torch_masks`; numpy arrays are converted on each call) or a :class:`Model`."""
    import torch
    if isinstance(masks, Model):
        masks = masks.mask
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            if name not in params:
                raise KeyError(f"apply_mask: the module has no parameter `{name}` (its parameters: {', '.join(params)})")
            p = params[name]
            if not isinstance(m, torch.Tensor):
                m = torch.from_numpy(np.asarray(m, dtype=np.float32).copy())
            if m.device != p.device or m.dtype != p.dtype:
                m = m.to(device=p.device, dtype=p.dtype)
            p.mul_(m)


def set_threads(ctx):
    """``torch.set_num_threads(ctx.threads)`` (``ctx`` a :class:`Context` or an int): compute on
    the share of the cores pipe gives the stage."""
    import torch
    torch.set_num_threads(int(ctx.threads if isinstance(ctx, Context) else ctx))
