"""The defaults a user gets hold at NEPI's scale (issue 9, item 5).

NEPI's test_concurrency shape (1000 applications on one node) with a bare
``ExperimentController()``: at NEPI's default of 50 threads the embedded
worker's actions failed with ``redis.exceptions.MaxConnectionsError: Too many
connections`` (its 100 action threads, two connections each, shared redis-py's
default pool of 100), and stopping the embedded worker from the controller's thread while its event
loop still ran raised ``RuntimeError: OrderedDict mutated during iteration``
(kombu's ``QoS.restore_unacked_once``) or ``Set changed size during iteration``.
Each scenario runs in its own process (tests/defaults_scenario.py) so that
its whole stderr, exit included, is read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import signals

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.celery_app import (
    DEFAULT_NTHREADS,
    broker_pool_limit,
    create_app,
    redis_pool_size,
    size_for_threads,
    worker_threads,
)
from nepi_dist.engine.embedded import EmbeddedRedis

from .conftest import ROOT, connected, stop_process, wait_for_workers

#: What must not appear on a healthy run's stderr.
BAD_SIGNS = ("Traceback", "RuntimeError", "MaxConnectionsError", "Too many connections", "Unrecoverable",
             "CRITICAL", "mutated during iteration", "changed size during iteration")


def bad_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(sign in line for sign in BAD_SIGNS)]


def run_scenario(tmp_path: Path, **env: str) -> dict[str, Any]:
    """Run tests/defaults_scenario.py in a fresh process; return its result; its stderr must be clean."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NEPI_NTHREADS", "NEPI_DIST_REDIS_URL")}
    environ.update(env, PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "tests.defaults_scenario"], cwd=str(ROOT), env=environ,
                          capture_output=True, text=True, timeout=150)
    print(done.stderr[-3000:], file=sys.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not bad_lines(done.stderr), bad_lines(done.stderr)[:20]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n1000 applications, {env or 'defaults'}: {result}")
    assert result["states"] == {"FINISHED": 1000}, result
    assert result["node"] == "STARTED" and result["abort"] is False, result
    return result


@pytest.mark.slow
def test_a_thousand_applications_finish_with_a_bare_controller_and_nothing_fails_at_exit(tmp_path: Path) -> None:
    result = run_scenario(tmp_path)
    assert result["embedded"] is True
    assert result["worker_concurrency"] == DEFAULT_NTHREADS
    assert result["store_pool"] >= redis_pool_size(worker_threads(DEFAULT_NTHREADS)) > 100


@pytest.mark.slow
def test_a_thousand_applications_finish_with_200_threads(tmp_path: Path) -> None:
    result = run_scenario(tmp_path, NEPI_NTHREADS="200")
    assert result["worker_concurrency"] == 200
    assert result["store_pool"] >= redis_pool_size(worker_threads(200))
    assert result["broker_pool_limit"] >= worker_threads(200)


@pytest.mark.slow
def test_a_thousand_applications_finish_on_two_workers_of_100_threads_and_they_exit_clean(
    tmp_path: Path, redis_server: EmbeddedRedis,
) -> None:
    url = redis_server.url
    env = dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=url, HOME=str(tmp_path))
    env.pop("NEPI_NTHREADS", None)
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "nepi_dist.cli", "worker", "--concurrency", "100", "--rm-module", "tests.rms",
             "--hostname", f"hundred{i}@%h"],
            env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=log.open("w"))
        for i, log in zip((1, 2), logs, strict=True)
    ]
    try:
        wait_for_workers(url, 2)
        result = run_scenario(tmp_path, NEPI_DIST_REDIS_URL=url)
        assert result["embedded"] is False
    finally:
        for worker in workers:
            stop_process(worker)
    assert [w.returncode for w in workers] == [0, 0]
    for log in logs:
        text = log.read_text()
        assert not bad_lines(text), (log.name, bad_lines(text)[:20])


def test_the_embedded_worker_is_stopped_on_its_own_event_loop_thread() -> None:
    """The cause of the errors at exit: the consumer was torn down from the controller's thread
    while the worker's loop thread still used it.  Celery's ``worker_shutdown`` signal is sent by
    the thread that stops the worker."""
    stopped_on: list[str] = []

    def record(sender: Any = None, **_: Any) -> None:
        stopped_on.append(threading.current_thread().name)

    with connected(signals.worker_shutdown, record):
        ec = ExperimentController(nthreads=4)
        guids = [ec.register_resource("Plain") for _ in range(20)]
        ec.deploy()
        ec.wait_finished(guids, timeout=30)
        assert [ec.state(g) for g in guids] == [ResourceState.FINISHED] * 20
        ec.shutdown()
    assert stopped_on == ["nepi-worker"]


def test_a_second_app_with_a_smaller_broker_pool_does_not_shrink_the_pool_the_first_one_uses(
    redis_server: EmbeddedRedis,
) -> None:
    """kombu's pool limit is one per process; with plain Celery the second app raises
    ``RuntimeError: Can't shrink pool when in use``."""
    big = create_app(redis_server.url)
    size_for_threads(big, 100)
    small = create_app(redis_server.url, broker_pool_limit=5)
    try:
        with big.producer_or_acquire():
            with small.producer_or_acquire():
                pass
            assert big.pool.limit == small.pool.limit == broker_pool_limit(worker_threads(100))
    finally:
        small.close()
        big.close()
