"""An action cut short half-way is carried to its end, not dropped.

A start that does ``set_started()``, work, then ``set_finished()`` (as NEPI's
own test RMs do) is killed between the two: its worker is SIGKILLed.  The
message comes back after the visibility timeout, the restarted worker takes
the claim over and resumes the start from STARTED.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from nepi_dist import ExperimentController, ResourceState
from nepi_dist.engine.embedded import EmbeddedRedis

from .conftest import start_worker_process, stop_process, wait_for_workers
from .rms import TwoStep


def test_a_start_killed_between_started_and_finished_is_resumed_and_finishes(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEPI_DIST_VISIBILITY_TIMEOUT", "4")
    url = redis_server.url
    ledger = tmp_path / "ledger"
    worker = start_worker_process(url, "resume1", 4)
    ec = ExperimentController(redis_url=url, local_worker=False, celery_settings={"visibility_timeout": 4})
    try:
        wait_for_workers(url, 1)
        g = ec.register_resource(TwoStep.get_rtype())
        ec.set(g, "hold", 3.0)
        ec.set(g, "ledger", str(ledger))
        ec.deploy()
        ec.wait_started([g], timeout=30)
        worker.send_signal(signal.SIGKILL)  # between set_started() and set_finished()
        worker.wait()
        assert ec.state(g) == ResourceState.STARTED
        worker = start_worker_process(url, "resume2", 4)
        ec.wait_finished([g], timeout=40)
        assert ec.state(g) == ResourceState.FINISHED
        runs = [line.split()[2] for line in ledger.read_text().splitlines()]
        assert runs == ["first", "resumed"], runs
        states = [int(f["s"]) for _, f in ec.store.client.xrange(ec.store.keys.events) if int(f["g"]) == g]
        assert states.count(ResourceState.STARTED) == 1, "the resumed start did not start it again"
        assert states[-1] == ResourceState.FINISHED
    finally:
        ec.shutdown()
        stop_process(worker)
