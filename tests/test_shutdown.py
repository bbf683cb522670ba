"""Release and shutdown: every RM ends RELEASED, the closed run stays readable."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import pytest

from nepi_dist import (
    ControllerClosedError,
    ExperimentController,
    FailureLevel,
    ResourceAction,
    ResourceState,
)
from nepi_dist.engine.embedded import EmbeddedRedis


def node_and_app(ec: ExperimentController) -> tuple[int, int]:
    node = ec.register_resource("Node")
    app = ec.register_resource("Application")
    ec.register_connection(app, node)
    ec.set(app, "command", "echo hi")
    ec.enable_trace(app, "stdout")
    return node, app


def test_after_shutdown_every_rm_is_released_and_queries_answer_from_the_final_snapshot(
    ec: ExperimentController,
) -> None:
    node, app = node_and_app(ec)
    ec.deploy()
    ec.wait_finished(app, timeout=20)
    ready_time = ec.get_resource(app).ready_time
    start_time = ec.get_resource(app).start_time
    ec.shutdown()

    assert ec.resources == [node, app]
    for g in (node, app):
        assert ec.state(g) == ResourceState.RELEASED
        assert ec.state(g, hr=True) == "RELEASED"
    rm = ec.get_resource(app)
    assert rm.ready_time == ready_time
    assert rm.start_time == start_time
    assert rm.finish_time is not None and rm.finish_time >= start_time
    assert rm.release_time is not None and rm.release_time >= rm.finish_time
    assert ec.get_resource(node).ready_time is not None
    assert ec.get(app, "command") == "echo hi"
    assert ec.get(app, "critical") is True
    assert ec.trace_enabled(app, "stdout") is True
    assert ec.failure_level == FailureLevel.OK
    assert ec.abort is False
    assert app in ec.get_resource(node).connections


def test_after_shutdown_every_change_raises_controller_closed_error(ec: ExperimentController) -> None:
    a = ec.register_resource("Plain")
    b = ec.register_resource("Plain")
    ec.deploy()
    ec.wait_finished([a, b], timeout=10)
    ec.shutdown()
    changes: list[Callable[[], Any]] = [
        lambda: ec.register_resource("Plain"),
        lambda: ec.set(a, "label", "x"),
        lambda: ec.deploy(),
        lambda: ec.deploy([a]),
        lambda: ec.schedule("0s", lambda: None),
        lambda: ec.schedule("0s", functools.partial(ec.get_resource(a).echo, 1)),
        lambda: ec.register_connection(a, b),
        lambda: ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED),
        lambda: ec.start(a),
        lambda: ec.stop(a),
    ]
    for change in changes:
        with pytest.raises(ControllerClosedError):
            change()
    assert ec.get(a, "label") is None
    assert ec.resources == [a, b]
    assert ec.get_resource(a).connections == set()


def test_a_second_shutdown_is_a_no_op(ec: ExperimentController) -> None:
    a = ec.register_resource("Plain")
    ec.deploy()
    ec.wait_finished(a, timeout=10)
    ec.shutdown()
    release_time = ec.get_resource(a).release_time
    ec.shutdown()
    assert ec.state(a) == ResourceState.RELEASED
    assert ec.get_resource(a).release_time == release_time


def test_the_embedded_redis_server_is_gone_after_shutdown(ec: ExperimentController) -> None:
    port = urlparse(ec.redis_url).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    ec.shutdown()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def open_files() -> dict[int, str]:
    """This process's open file descriptors and what each is (``socket:[…]``, ``anon_inode:[eventpoll]``, …)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
    return found


def test_controllers_run_one_after_another_in_one_process_leave_no_socket_or_event_poll_behind() -> None:
    # An ExperimentRunner, a notebook or a test session runs many controllers in one process.
    def one_run() -> None:
        with ExperimentController(nthreads=8) as ec:
            node = ec.register_resource("LinuxNode")
            a = ec.register_resource("LinuxApplication")
            ec.set(a, "command", "true")
            ec.register_connection(a, node)
            ec.deploy()
            ec.wait_finished(a, timeout=30)

    one_run()  # first use: imports, kombu's and Celery's once-per-process setup
    gc.collect()  # what only garbage holds is not left behind
    before = open_files()
    for _ in range(3):
        one_run()
    gc.collect()
    left = {fd: what for fd, what in open_files().items()
            if fd not in before and what.startswith(("socket:", "anon_inode:"))}
    assert left == {}, f"open after three more runs: {left}"


def test_the_controller_works_as_a_context_manager() -> None:
    with ExperimentController(nthreads=8) as ec:
        a = ec.register_resource("Plain")
        ec.deploy()
        ec.wait_finished(a, timeout=10)
        assert ec.state(a) == ResourceState.FINISHED
    assert ec.store.frozen
    assert ec.state(a) == ResourceState.RELEASED
    with pytest.raises(ControllerClosedError):
        ec.register_resource("Plain")


def test_release_of_a_subset_releases_only_those(ec: ExperimentController) -> None:
    a = ec.register_resource("Forever")
    b = ec.register_resource("Forever")
    c = ec.register_resource("Forever")
    ec.deploy()
    ec.wait_started([a, b, c], timeout=10)
    ec.release([a, c])
    assert ec.state(a) == ResourceState.RELEASED
    assert ec.state(c) == ResourceState.RELEASED
    assert ec.state(b) == ResourceState.STARTED
    assert ec.get_resource(b).release_time is None


def test_release_ends_every_rm_released_even_when_do_release_raises(ec: ExperimentController) -> None:
    bad = ec.register_resource("BadRelease")
    good = ec.register_resource("Forever")
    ec.deploy()
    ec.wait_started([bad, good], timeout=10)
    ec.release()
    assert ec.state(bad) == ResourceState.RELEASED
    assert ec.state(good) == ResourceState.RELEASED
    assert ec.get_resource(bad).release_time is not None
    assert ec.failure_level == FailureLevel.OK


def test_release_without_any_worker_forces_every_rm_released_without_hanging(
    redis_server: EmbeddedRedis,
) -> None:
    ec = ExperimentController(redis_url=redis_server.url, local_worker=False)
    try:
        guids = [ec.register_resource("Plain") for _ in range(3)]
        ec.deploy()
        began = time.monotonic()
        ec.release(timeout=1)
        assert time.monotonic() - began < 5
        assert [ec.state(g) for g in guids] == [ResourceState.RELEASED] * 3
        assert all(ec.get_resource(g).ready_time is None for g in guids), "no worker ever deployed them"
    finally:
        ec.shutdown()
    assert [ec.state(g) for g in guids] == [ResourceState.RELEASED] * 3
