"""An application outlives the worker that started it and is still seen to finish."""

from __future__ import annotations

import signal
import subprocess

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis

from .conftest import start_worker_process, stop_process, wait_for_workers


def test_an_application_keeps_running_across_a_worker_restart_and_still_finishes(
    redis_server: EmbeddedRedis,
) -> None:
    url = redis_server.url
    first = start_worker_process(url, "first", 4)
    second: subprocess.Popen[bytes] | None = None
    ec = ExperimentController(redis_url=url)
    try:
        wait_for_workers(url, 1)
        node = ec.register_resource("linux::Node")
        app = ec.register_resource("linux::Application")
        marker = f"nepi-restart-{ec.run_id}"
        ec.set(app, "command", f"bash -c 'exec -a {marker} sleep 4'; echo survived")
        ec.register_connection(app, node)
        ec.deploy()
        ec.wait_started(app, timeout=60)

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        alive = subprocess.run(["pgrep", "-f", marker], capture_output=True)
        assert alive.returncode == 0, "the application died with its worker"

        second = start_worker_process(url, "second", 4)
        ec.wait_finished(app, timeout=90)
        assert ec.state(app) == ResourceState.FINISHED
        assert ec.trace(app, "stdout") == "survived\n"
    finally:
        ec.shutdown()
        for proc in (first, second):
            if proc is not None:
                stop_process(proc)
