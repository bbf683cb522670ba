"""A NEPI-style experiment: 20 applications, each started by a condition on the one before.

Application k starts once application k-1 FINISHED (the odd ones 0.2 s after);
every one prints its number.  Prints OK when all 20 FINISHED in that order,
each started no sooner than its condition allowed.
"""

import getpass
import sys

from nepi.execution.ec import ExperimentController
from nepi.execution.resource import ResourceAction, ResourceState

N = 20
ec = ExperimentController("nepi-script-conditions")

node = ec.register_resource("LinuxNode")
ec.set(node, "hostname", "localhost")
ec.set(node, "username", getpass.getuser())

apps = []
for k in range(N):
    app = ec.register_resource("LinuxApplication")
    ec.set(app, "command", f"echo app {k}")
    ec.register_connection(app, node)
    if apps:
        ec.register_condition(app, ResourceAction.START, apps[-1], ResourceState.FINISHED,
                              "0.2s" if k % 2 else None)
    apps.append(app)

ec.deploy()
ec.wait_finished(apps)

rms = [ec.get_resource(a) for a in apps]
starts = [rm.start_time for rm in rms]
finishes = [rm.finish_time for rm in rms]
outputs = [ec.trace(a, "stdout") for a in apps]
states = [ec.state(a, hr=True) for a in apps]
ec.shutdown()

ok = states == ["FINISHED"] * N and outputs == [f"app {k}\n" for k in range(N)]
for k in range(1, N):
    least = finishes[k - 1] + (0.2 if k % 2 else 0.0)
    if starts[k] < least - 0.005:
        ok = False
        print(f"app {k} started {least - starts[k]:.3f} s early")
print(f"{N} applications, last finished {finishes[-1] - starts[0]:.2f} s after the first started")
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
