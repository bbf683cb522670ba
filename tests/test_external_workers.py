"""The same scenarios with two separate worker processes over a Redis URL."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

import pytest

from nepi_dist import ExperimentController, FailureLevel, ResourceAction, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis

from .conftest import ROOT, stop_process, wait_for_workers
from .test_deploy_order import build_graph, check_order


@pytest.fixture
def remote_ec(two_workers: str, monkeypatch: pytest.MonkeyPatch) -> ExperimentController:
    monkeypatch.setenv("NEPI_DIST_REDIS_URL", two_workers)
    controller = ExperimentController()
    yield controller
    if not controller.store.frozen:
        controller.shutdown()


def test_a_controller_with_a_redis_url_uses_external_workers_only(remote_ec: ExperimentController) -> None:
    assert remote_ec._worker is None and remote_ec._redis is None
    guids = [remote_ec.register_resource("Plain") for _ in range(20)]
    remote_ec.deploy()
    remote_ec.wait_finished(guids, timeout=60)
    assert all(remote_ec.state(g) == ResourceState.FINISHED for g in guids)
    running = remote_ec.store.client.keys("nepi:worker:*")
    hosts = {k.split(":")[-1].split(".")[1] for k in running}
    assert os.getpid() not in {int(h) for h in hosts}, "no action ran in the controller's process"


def test_the_deploy_order_holds_across_two_worker_processes(remote_ec: ExperimentController) -> None:
    g = build_graph(remote_ec)
    remote_ec.deploy()
    remote_ec.wait_finished([g["app1"], g["app2"]], timeout=60)
    check_order(remote_ec, g)


def test_a_start_delay_is_honoured_across_worker_processes(remote_ec: ExperimentController) -> None:
    a, b = remote_ec.register_resource("Plain"), remote_ec.register_resource("Plain")
    remote_ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED, "2s")
    remote_ec.deploy()
    remote_ec.wait_finished([a, b], timeout=30)
    delta = remote_ec.get_resource(b).start_time - remote_ec.get_resource(a).start_time
    assert 2.0 <= delta < 2.1


def test_a_critical_failure_on_a_worker_aborts_the_run(remote_ec: ExperimentController) -> None:
    node = remote_ec.register_resource("Node")
    apps = [remote_ec.register_resource("ErrorApplication") for _ in range(5)]
    for app in apps:
        remote_ec.register_connection(app, node)
    remote_ec.deploy()
    remote_ec.wait_finished(apps, timeout=60)
    assert remote_ec.abort
    assert remote_ec.failure_level == FailureLevel.RM_FAILURE
    remote_ec.shutdown()
    assert all(remote_ec.state(g) == ResourceState.RELEASED for g in [node, *apps])


@pytest.mark.slow
def test_a_thousand_applications_finish_on_two_worker_processes(remote_ec: ExperimentController) -> None:
    node = remote_ec.register_resource("Node")
    apps = [remote_ec.register_resource("Application") for _ in range(1000)]
    for app in apps:
        remote_ec.register_connection(app, node)
    began = time.monotonic()
    remote_ec.deploy()
    remote_ec.wait_finished(apps, timeout=240)
    took = time.monotonic() - began
    print(f"\n1000 applications on two external workers: {took:.2f}s deploy to all FINISHED")
    assert remote_ec.state(node) == ResourceState.STARTED
    states = collections.Counter(remote_ec.state(g) for g in apps)
    assert states == {ResourceState.FINISHED: 1000}


def test_the_plain_celery_command_runs_a_worker_that_serves_actions(redis_server: EmbeddedRedis) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NEPI_DIST_REDIS_URL=redis_server.url,
               NEPI_DIST_RM_MODULES="tests.rms")
    cmd = [sys.executable, "-m", "celery", "-A", "nepi_dist.engine.startup", "worker", "-Q", "nepi.pool",
           "--pool", "threads", "-c", "4", "--without-gossip", "--without-mingle", "-l", "WARNING"]
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT))
    try:
        wait_for_workers(redis_server.url, 1)
        ec = ExperimentController(redis_url=redis_server.url)
        try:
            guids = [ec.register_resource("Plain") for _ in range(5)]
            ec.deploy()
            ec.wait_finished(guids, timeout=30)
            assert all(ec.state(g) == ResourceState.FINISHED for g in guids)
        finally:
            ec.shutdown()
    finally:
        stop_process(proc)
