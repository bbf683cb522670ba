"""The run behind the README's picture of the live view: ten pings, a slower application, one that fails (not critical).

`nepi-dist run --svg docs/cockpit-live.svg examples/cockpit_demo.py`
"""
from nepi_dist import ExperimentController

ec = ExperimentController(exp_id="readme")
node = ec.register_resource("linux::Node")
for i in range(10):
    p = ec.register_resource("linux::Ping")
    ec.set(p, "target", f"127.0.0.{i + 1}")
    ec.set(p, "count", 3)
    ec.set(p, "interval", 0.2)
    ec.register_connection(p, node)
slow = ec.register_resource("linux::Application")
ec.set(slow, "command", "sleep 3")
ec.register_connection(slow, node)
bad = ec.register_resource("linux::Application")
ec.set(bad, "command", "ls /no/such/dir")
ec.set(bad, "critical", False)
ec.register_connection(bad, node)
ec.deploy()
ec.wait_finished(ec.resources[1:], timeout=60)
ec.shutdown()
