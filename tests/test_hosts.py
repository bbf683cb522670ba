"""Host workers: an RM on a node served by a host worker runs on that worker's queue."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.embedded import EmbeddedRedis
from nepi_dist.routing import POOL_QUEUE, host_queue

from .conftest import ROOT, start_worker_process, stop_process, wait_for_workers


@pytest.fixture
def pool_and_host_worker(redis_server: EmbeddedRedis) -> Iterator[str]:
    procs = [
        start_worker_process(redis_server.url, "pool", 4),
        start_worker_process(redis_server.url, "h1", 4, "--host", "h1"),
    ]
    try:
        wait_for_workers(redis_server.url, 2)
        yield redis_server.url
    finally:
        for p in procs:
            stop_process(p)


def test_applications_run_on_the_host_worker_of_their_node_or_on_the_pool(pool_and_host_worker: str) -> None:
    ec = ExperimentController(redis_url=pool_and_host_worker)
    try:
        on_h1 = ec.register_resource("linux::Node")
        ec.set(on_h1, "worker", "h1")
        pooled = ec.register_resource("linux::Node")
        apps = {}
        for name, node in (("h1", on_h1), ("pool", pooled)):
            apps[name] = [ec.register_resource("linux::Application") for _ in range(3)]
            for a in apps[name]:
                ec.set(a, "command", "echo served-by=${NEPI_DIST_WORKER_HOST:-pool}")
                ec.register_connection(a, node)
        ec.deploy()
        every = [a for group in apps.values() for a in group]
        ec.wait_finished(every, timeout=60)
        assert all(ec.state(a) == ResourceState.FINISHED for a in every)
        for name, group in apps.items():
            for a in group:
                assert ec.trace(a, "stdout") == f"served-by={name}\n"
    finally:
        ec.shutdown()


def test_the_workers_command_lists_live_workers_and_their_queues(pool_and_host_worker: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "nepi_dist.cli", "workers", "--redis-url", pool_and_host_worker],
        capture_output=True, text=True, env=env, check=True, timeout=30,
    ).stdout
    # Heartbeats start with each worker's first task or its ready signal.
    assert "2 live worker process(es)" in out, out
    assert f"host=h1\tqueues={host_queue('h1')}" in out
    assert f"host=-\tqueues={POOL_QUEUE}" in out
