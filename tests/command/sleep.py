"""Runs far past any test's timeout, and starts a child that would outlive it."""
import subprocess
import sys
import time

print("sleeping", flush=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
time.sleep(120)
