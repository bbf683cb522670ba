"""A NEPI-style multi-run: an application's stdout gathered by a Collector into each run's folder.

As NEPI's ``test/resources/linux/multirun.py``, on localhost; it imports from
``nepi.*`` only.
Prints one JSON line: the runs made, the experiment folder, and the run
folders with their files.  Argument: the local_dir.
"""

import json
import os
import sys

from nepi.execution.ec import ExperimentController
from nepi.execution.runner import ExperimentRunner

local_dir = sys.argv[1]
ec = ExperimentController(exp_id="multirun-collector", local_dir=local_dir)

node = ec.register_resource("LinuxNode")
ec.set(node, "hostname", "localhost")

app = ec.register_resource("LinuxApplication")
ec.set(app, "command", "echo run $(date +%s%N)")
ec.register_connection(app, node)

collector = ec.register_resource("Collector")
ec.set(collector, "traceName", "stdout")
ec.register_connection(app, collector)

seen = []


def compute_metric_callback(ec, run):
    seen.append([run, ec.run_id, ec.trace(app, "stdout")])
    return float(len(seen))


rnr = ExperimentRunner()
runs = rnr.run(ec, min_runs=3, max_runs=3, compute_metric_callback=compute_metric_callback,
               wait_guids=[app], wait_time=0)

folders = {}
for d in sorted(os.listdir(ec.exp_dir)):
    path = os.path.join(ec.exp_dir, d)
    if os.path.isdir(path):
        folders[d] = {}
        for name in sorted(os.listdir(path)):
            with open(os.path.join(path, name)) as f:
                folders[d][name] = f.read()
print(json.dumps({"runs": runs, "exp_dir": ec.exp_dir, "folders": folders, "seen": seen}))
