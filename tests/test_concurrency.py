"""NEPI's test_concurrency: a thousand resources through their lifecycle."""

from __future__ import annotations

import logging
import time

import pytest

from nepi_dist import ExperimentController, ResourceState

from . import rms

COUNT = 1000


@pytest.mark.slow
def test_a_thousand_applications_on_one_node_all_finish(
    ec: ExperimentController, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rms, "SLEEP", 0.01)
    started = time.monotonic()
    node = ec.register_resource("Node")
    apps = [ec.register_resource("Application") for _ in range(COUNT)]
    for app in apps:
        ec.register_connection(app, node)
    ec.deploy()
    ec.wait_finished(apps, timeout=240)
    elapsed = time.monotonic() - started
    print(f"\n{COUNT} Application on one Node: registered, deployed and finished in {elapsed:.1f}s")
    assert ec.state(node) == ResourceState.STARTED
    states = ec.store.states(apps)
    assert all(s == ResourceState.FINISHED for s in states), {ResourceState(s).name for s in states if s is not None}


@pytest.mark.slow
def test_a_thousand_plain_resources_finish_and_release(
    ec: ExperimentController, caplog: pytest.LogCaptureFixture
) -> None:
    started = time.monotonic()
    guids = [ec.register_resource("Plain") for _ in range(COUNT)]
    ec.deploy()
    ec.wait_finished(guids, timeout=240)
    finished = time.monotonic()
    assert all(s == ResourceState.FINISHED for s in ec.store.states(guids))
    with caplog.at_level(logging.WARNING, logger="ExperimentController"):
        ec.release(timeout=120)
    released = time.monotonic()
    print(
        f"\n{COUNT} Plain: registered, deployed and finished in {finished - started:.1f}s, "
        f"released in {released - finished:.1f}s"
    )
    assert all(s == ResourceState.RELEASED for s in ec.store.states(guids))
    assert not [r for r in caplog.records if "no worker released" in r.getMessage()], "release was forced"
