"""NEPI's test_concurrency shape as a script, with the controller a user gets by default.

``python -m tests.defaults_scenario`` registers 1000 applications on one node
with a bare ``ExperimentController()`` (threads from ``$NEPI_NTHREADS``, else
NEPI's 50; the embedded Redis and worker unless ``$NEPI_DIST_REDIS_URL`` names
a Redis served by external workers), deploys, waits for all of them to finish,
shuts down, and prints one JSON line: the states, the seconds taken and the
sizes in use.  tests/test_defaults.py runs it in a subprocess to read its
stderr to the very end (kombu's errors at exit come from atexit handlers).
"""

from __future__ import annotations

import collections
import json
import os
import time

from nepi_dist import ExperimentController, ResourceState

from . import rms

COUNT = int(os.environ.get("NEPI_SCENARIO_COUNT", "1000"))


def main() -> None:
    rms.SLEEP = 0.01  # as tests/test_concurrency.py
    began = time.monotonic()
    ec = ExperimentController()
    try:
        node = ec.register_resource("Node")
        apps = [ec.register_resource("Application") for _ in range(COUNT)]
        for app in apps:
            ec.register_connection(app, node)
        ec.deploy()
        ec.wait_finished(apps, timeout=120)
        took = time.monotonic() - began
        states = collections.Counter(ResourceState(s).name for s in ec.store.states(apps))
        runtime = getattr(ec.app, "_nepi_runtime", None)
        result = {
            "states": dict(states),
            "node": ResourceState(ec.state(node)).name,
            "abort": ec.abort,
            "seconds": round(took, 2),
            "embedded": ec._worker is not None,
            "worker_concurrency": ec.app.conf.worker_concurrency,
            "store_pool": None if runtime is None else runtime.client.connection_pool.max_connections,
            "broker_pool_limit": ec.app.pool.limit,
        }
    finally:
        ec.shutdown()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
