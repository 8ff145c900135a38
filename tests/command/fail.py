"""Prints, writes an output, then fails: nothing of it may be published."""
import os
import sys

print("loading the data")
print("step 1 of 3", file=sys.stderr)
with open(os.path.join(os.environ["PIPE_OUT"], "half.txt"), "w") as f:
    f.write("half written")
print("CUDA out of memory (simulated)", file=sys.stderr)
sys.exit(3)
