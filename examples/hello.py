"""A real experiment on the embedded default: the quick start's first command.

One node, ten applications that each run for a moment, an eleventh started
two seconds after the first one STARTED, and one application that fails but
is not critical.  Prints what happened, on the Redis clock.
"""

from __future__ import annotations

import time

from nepi_dist import (
    ExperimentController,
    FailureLevel,
    ResourceAction,
    ResourceFactory,
    ResourceManager,
    ResourceState,
    ResourceState2str,
)


class Node(ResourceManager):
    _rtype = "example::Node"


class App(ResourceManager):
    _rtype = "example::App"

    def do_deploy(self) -> None:
        node = self.get_connected(Node.rtype())[0]
        if node.state < ResourceState.READY:
            self.ec.schedule("0.1s", self.deploy)
        else:
            super().do_deploy()

    def do_start(self) -> None:
        super().do_start()
        self.ec.schedule("0.5s", self.finish)


class Flaky(App):
    _rtype = "example::Flaky"

    def do_start(self) -> None:
        raise RuntimeError("this application fails on purpose")


for cls in (Node, App, Flaky):
    ResourceFactory.register_type(cls)


def main() -> None:
    began = time.monotonic()
    ec = ExperimentController(exp_id="hello")
    print(f"run {ec.exp_id}/{ec.run_id} on {ec.redis_url}")
    node = ec.register_resource("example::Node")
    apps = [ec.register_resource("example::App") for _ in range(10)]
    late = ec.register_resource("example::App")
    flaky = ec.register_resource("example::Flaky")
    ec.set(flaky, "critical", False)
    for g in [*apps, late, flaky]:
        ec.register_connection(g, node)
    ec.register_condition(late, ResourceAction.START, apps[0], ResourceState.STARTED, "2s")

    ec.deploy()
    ec.wait_finished([*apps, late, flaky], timeout=60)

    t0 = ec.get_resource(apps[0]).start_time
    for g in [node, *apps, late, flaky]:
        rm = ec.get_resource(g)
        started = f"{rm.start_time - t0:+7.3f}s" if rm.start_time and t0 else "   never"
        print(f"  guid {g:2d} {rm.rtype():15s} {ResourceState2str[ec.state(g)]:9s} started {started}")
    late_start = ec.get_resource(late).start_time
    if late_start and t0:
        print(f"late application started {late_start - t0:.3f}s after the first one (condition: 2s)")
    else:
        print("late application never started (the first one never did)")
    level = {FailureLevel.OK: "OK", FailureLevel.RM_FAILURE: "RM_FAILURE"}.get(ec.failure_level, "EC_FAILURE")
    print(f"failure level {level} (the failing application was not critical)")
    ec.shutdown()
    print(f"released: {all(ec.state(g) == ResourceState.RELEASED for g in ec.resources)}; "
          f"took {time.monotonic() - began:.2f}s")


if __name__ == "__main__":
    main()
