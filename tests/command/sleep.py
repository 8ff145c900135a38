"""Runs far past any test's timeout, and starts a child that would outlive it. With
SLEEP_PIDS set, writes its own pid and its child's there, so a test can see both stopped."""
import os
import subprocess
import sys
import time

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
if os.environ.get("SLEEP_PIDS"):
    with open(os.environ["SLEEP_PIDS"] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    os.replace(os.environ["SLEEP_PIDS"] + ".tmp", os.environ["SLEEP_PIDS"])
print("sleeping", flush=True)
time.sleep(120)
