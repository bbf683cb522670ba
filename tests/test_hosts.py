"""Host workers: an RM on a node served by a host worker runs on that worker's queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis
from nepi_dist.engine.heartbeat import live_workers
from nepi_dist.engine.keys import worker_pattern
from nepi_dist.engine.routing import POOL_QUEUE, host_queue
from nepi_dist.errors import NoWorkerError, UnknownTraceError

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
        # Only the h1 worker reaches this host (locally): the controller's reads go through it.
        ec.set(on_h1, "hostname", "unreachable-from-the-controller.invalid")
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


def test_a_worker_restarted_after_sigkill_marks_its_dead_predecessor_dead_at_once(
    redis_server: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    first = start_worker_process(redis_server.url, "h2", 2, "--host", "h2")
    second = None
    try:
        wait_for_workers(redis_server.url, 1)
        old = _heartbeats_of(client, first.pid)
        assert len(old) == 1, old
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert client.ttl(old[0]) > 5, "the dead worker's heartbeat is still there, for a while"
        second = start_worker_process(redis_server.url, "h2", 2, "--host", "h2")
        wait_for_workers(redis_server.url, 1)
        deadline = time.monotonic() + 10
        while json.loads(client.get(old[0]) or "{}").get("pid") == first.pid and time.monotonic() < deadline:
            time.sleep(0.1)
        # A tombstone: a claim the dead worker held is taken over at once, not after a suspicion.
        assert json.loads(client.get(old[0]) or "{}") == {"dead": True}, "the dead worker still looks alive"
        assert old[0].removeprefix("nepi:worker:") not in live_workers(client)
        assert len(_heartbeats_of(client, second.pid)) == 1
    finally:
        for p in (first, second):
            if p is not None:
                stop_process(p)


def _heartbeats_of(client: redis.Redis, pid: int) -> list[str]:
    return [k for k in client.scan_iter(match=worker_pattern())
            if json.loads(client.get(k) or "{}").get("pid") == pid]


def test_deploying_on_a_host_without_a_live_worker_fails_after_the_nodes_worker_wait(
    ec: ExperimentController,
) -> None:
    node = ec.register_resource("linux::Node")
    ec.set(node, "worker", "nobody-serves-this-host")
    ec.set(node, "workerWait", 1.0)
    app = ec.register_resource("linux::Application")
    ec.set(app, "command", "true")
    ec.register_connection(app, node)
    started = time.monotonic()
    ec.deploy()
    ec.wait_finished([node, app], timeout=30)  # returns at the first failure: the run aborts
    waited = time.monotonic() - started
    deadline = time.monotonic() + 5
    while {ec.state(node), ec.state(app)} != {ResourceState.FAILED} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ec.state(node) == ResourceState.FAILED
    assert ec.state(app) == ResourceState.FAILED
    assert 1.0 <= waited < 5.0, waited
    err = ec.store.rm_field(node, "err") or ""
    assert "no live worker served queue nepi.host.nobody-serves-this-host within 1s" in err, err
    assert "nepi-dist worker --host nobody-serves-this-host" in err
    assert ec.abort, "the node is critical: its failure aborts the run"


def test_a_host_whose_worker_is_live_at_deploy_is_not_failed_by_the_wait(pool_and_host_worker: str) -> None:
    ec = ExperimentController(redis_url=pool_and_host_worker)
    try:
        node = ec.register_resource("linux::Node")
        ec.set(node, "worker", "h1")
        ec.set(node, "workerWait", 0.5)
        app = ec.register_resource("linux::Application")
        ec.set(app, "command", "sleep 1.5")
        ec.register_connection(app, node)
        ec.deploy()
        ec.wait_finished(app, timeout=30)
        assert ec.state(app) == ResourceState.FINISHED
        assert ec.state(node) == ResourceState.STARTED
    finally:
        ec.shutdown()


def test_reading_a_trace_of_a_host_without_a_live_worker_says_so_at_once(ec: ExperimentController) -> None:
    node = ec.register_resource("linux::Node")
    ec.set(node, "worker", "nobody-serves-this-host")
    app = ec.register_resource("linux::Application")
    ec.register_connection(app, node)
    started = time.monotonic()
    with pytest.raises(NoWorkerError, match="nepi-dist worker --host nobody-serves-this-host"):
        ec.trace(app, "stdout")
    assert time.monotonic() - started < 2
    with pytest.raises(UnknownTraceError):
        ec.trace(app, "../etc/passwd")
