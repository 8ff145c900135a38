"""Writes what its `params.what` asks for, wrongly."""
import json
import os

out = os.environ["PIPE_OUT"]
what = json.load(open(os.environ["PIPE_PARAMS"]))["what"]
if what == "string_metric":
    json.dump({"accuracy": "0.9"}, open(os.path.join(out, "metrics.json"), "w"))
elif what == "not_json":
    open(os.path.join(out, "metrics.json"), "w").write("{accuracy: 0.9")
elif what == "nothing":
    pass
