"""A NEPI-style experiment: ping localhost three times and read the ping's stdout trace.

Written as a NEPI user writes one: imports from ``nepi.*`` only, NEPI's type
and attribute names (values as strings, as NEPI took them), a plain
``ExperimentController(exp_id)``.  Prints the trace, then OK or FAILED.
"""

import getpass
import sys

from nepi.execution.ec import ExperimentController
from nepi.execution.resource import ResourceState
from nepi.execution.trace import TraceAttr

ec = ExperimentController("nepi-script-ping")

node = ec.register_resource("LinuxNode")
ec.set(node, "hostname", "localhost")
ec.set(node, "username", getpass.getuser())
ec.set(node, "cleanExperiment", True)

ping = ec.register_resource("LinuxPing")
ec.set(ping, "count", "3")
ec.set(ping, "interval", "0.2")
ec.set(ping, "target", "127.0.0.1")
ec.register_connection(ping, node)
ec.enable_trace(ping, "stdout")

ec.deploy()
ec.wait_finished(ping)

stdout = ec.trace(ping, "stdout")
size = ec.trace(ping, "stdout", attr=TraceAttr.SIZE)
state = ec.state(ping)
ec.shutdown()

print(stdout)
ok = state == ResourceState.FINISHED and "3 packets transmitted, 3 received" in stdout and size == len(stdout)
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
