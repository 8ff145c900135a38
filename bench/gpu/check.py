"""Checks the outputs of bench/gpu/smoke.sh (see there). Exits non-zero on failure."""
import glob
import json
import os
import sys

out = sys.argv[1]


def last_run(cache):
    runs = sorted(glob.glob(os.path.join(cache, "runs", "*.json")))
    with open(runs[-1]) as f:
        return json.load(f)


def stage(run, name):
    return next(s for s in run["stages"] if s["name"] == name)


def curve(cache, key):
    with open(os.path.join(cache, "entries", key[:2], key, "curve.json")) as f:
        return json.load(f)


ok = True
gpu, cpu = last_run(os.path.join(out, "gpu")), last_run(os.path.join(out, "cpu"))
print("gpu device:", gpu["device"], " cpu device:", cpu["device"])
if not gpu["device"].startswith("cuda"):
    print("the GPU run did not run on cuda")
    ok = False
for name in ["dense", "ticket"]:
    c = curve(os.path.join(out, "gpu"), stage(gpu, name)["key"])
    losses = [p["train_loss"] for p in c if p["iteration"] > 0]
    falls = losses[-1] < losses[0]
    print(f"{name}: train loss per epoch {['%.4f' % l for l in losses]} -> {'falls' if falls else 'DOES NOT FALL'}")
    ok &= falls
    a_gpu = stage(gpu, name)["metrics"]["test_acc"]
    a_cpu = stage(cpu, name)["metrics"]["test_acc"]
    agree = abs(a_gpu - a_cpu) <= 0.01
    print(f"{name}: test accuracy gpu {a_gpu:.4f} cpu {a_cpu:.4f} -> {'agree' if agree else 'DISAGREE'} (tolerance 0.01)")
    ok &= agree

mem = [int(x) for x in open(os.path.join(out, "mem.csv")).read().split() if x.strip().isdigit()]
if len(mem) >= 6:
    third = len(mem) // 3
    early, late = max(mem[:third]), max(mem[-third:])
    flat = late <= early * 1.05 + 64
    print(f"gpu memory MiB: first third max {early}, last third max {late}, samples {len(mem)} -> {'flat' if flat else 'GROWS'}")
    ok &= flat
else:
    print("too few nvidia-smi samples to judge memory")
    ok = False
print("SMOKE", "PASSED" if ok else "FAILED")
sys.exit(0 if ok else 1)
