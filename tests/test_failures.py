"""NEPI's failure tests: critical failures abort the run, non-critical ones do not.

On abort every wait returns, the FailureManager drops and revokes the pending
actions (none of them runs afterwards), and release still ends every RM in
RELEASED.  An EC-internal failure makes ``shutdown`` raise.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from nepi_dist import (
    ECFailureError,
    ECState,
    ExperimentController,
    FailureLevel,
    ResourceAction,
    ResourceState,
    TaskStatus,
    WaitTimeoutError,
)

ERROR_TEXT = "NOT A REAL ERROR. JUST TESTING"


def node_with_error_apps(ec: ExperimentController, count: int = 10) -> tuple[int, list[int]]:
    """NEPI's scenario: ``count`` ErrorApplication (critical by default) on one Node."""
    node = ec.register_resource("Node")
    apps = [ec.register_resource("ErrorApplication") for _ in range(count)]
    for app in apps:
        ec.register_connection(app, node)
    return node, apps


def assert_aborted_by(ec: ExperimentController, apps: list[int]) -> None:
    """The run aborted on an RM failure: some app FAILED with its error, none got further."""
    assert ec.failure_level == FailureLevel.RM_FAILURE
    assert ec.abort is True
    states = {g: ec.state(g) for g in apps}
    failed = [g for g, s in states.items() if s == ResourceState.FAILED]
    assert failed, f"no ErrorApplication FAILED: {states}"
    for g in failed:
        message = ec.get_resource(g).error_message
        assert message is not None and ERROR_TEXT in message
    # An ErrorApplication can only fail; the others were stopped by the abort before READY.
    assert all(s < ResourceState.READY for g, s in states.items() if g not in failed), states


def test_failing_critical_applications_abort_the_run_and_wait_finished_returns(
    ec: ExperimentController,
) -> None:
    _, apps = node_with_error_apps(ec)
    ec.deploy()
    ec.wait_finished(apps, timeout=30)  # returns only because the run aborted
    assert_aborted_by(ec, apps)


def test_wait_deployed_returns_when_the_run_aborts(ec: ExperimentController) -> None:
    _, apps = node_with_error_apps(ec)
    ec.deploy()
    ec.wait_deployed(apps, timeout=30)  # no app ever reaches READY
    assert_aborted_by(ec, apps)


def test_wait_started_returns_when_the_run_aborts(ec: ExperimentController) -> None:
    _, apps = node_with_error_apps(ec)
    ec.deploy()
    ec.wait_started(apps, timeout=30)  # no app ever reaches STARTED
    assert_aborted_by(ec, apps)


def test_a_failing_non_critical_resource_does_not_abort_the_run(ec: ExperimentController) -> None:
    node = ec.register_resource("Node")
    eapp = ec.register_resource("ErrorApplication")
    ec.set(eapp, "critical", False)
    ec.register_connection(eapp, node)
    apps = [ec.register_resource("Application") for _ in range(10)]
    for app in apps:
        ec.register_connection(app, node)
    ec.deploy()
    ec.wait_finished([eapp, *apps], timeout=60)
    assert ec.state(eapp) == ResourceState.FAILED
    assert ERROR_TEXT in (ec.get_resource(eapp).error_message or "")
    assert all(ec.state(app) == ResourceState.FINISHED for app in apps)
    assert ec.failure_level == FailureLevel.OK
    assert ec.abort is False


def test_a_critical_resource_failing_at_start_aborts_the_run(ec: ExperimentController) -> None:
    bad = ec.register_resource("FailingStart")
    ec.deploy()
    ec.wait_finished([bad], timeout=30)
    assert ec.state(bad) == ResourceState.FAILED
    assert "start fails on purpose" in (ec.get_resource(bad).error_message or "")
    assert ec.failure_level == FailureLevel.RM_FAILURE
    assert ec.abort is True


def test_starts_waiting_on_a_failed_critical_resource_never_run(ec: ExperimentController) -> None:
    bad = ec.register_resource("FailingStart")
    plains = [ec.register_resource("Plain") for _ in range(200)]
    ec.register_condition(plains, ResourceAction.START, bad, ResourceState.STARTED)
    ec.deploy()
    ec.wait_finished([bad], timeout=30)
    assert ec.abort is True
    # The failure wakes the 200 parked starts; the aborted run must refuse every one.
    with pytest.raises(WaitTimeoutError):
        ec.wait(plains, ResourceState.STARTED, timeout=3)
    reached = (ResourceState.STARTED, ResourceState.STOPPED, ResourceState.FINISHED)
    started = [g for g, s in zip(plains, ec.store.states(plains), strict=True) if s in reached]
    assert started == [], f"{len(started)} resources started after the abort"
    assert ec.store.pending_ids() == []


def test_actions_scheduled_ahead_are_revoked_when_the_run_aborts(ec: ExperimentController) -> None:
    forevers = [ec.register_resource("Forever") for _ in range(20)]
    ec.deploy(forevers)
    ec.wait_started(forevers, timeout=30)
    t0 = time.monotonic()
    tids = [ec.schedule("4s", ec.get_resource(g).stop, track=True) for g in forevers]
    assert set(tids) <= set(ec.store.pending_ids())
    bad = ec.register_resource("FailingStart")
    ec.deploy([bad])
    ec.wait_finished([bad], timeout=30)
    assert ec.abort is True
    # The FailureManager reacts to the alarm at once: well before the stops are due
    # their ids are gone from the pending set (dropped, not claimed).
    threading.Event().wait(1.0)
    assert ec.store.pending_ids() == []
    # Past the due time, no stop ran.
    with pytest.raises(WaitTimeoutError):
        ec.wait(forevers, ResourceState.STOPPED, timeout=max(0.5, 4.5 - (time.monotonic() - t0)))
    assert all(ec.state(g) == ResourceState.STARTED for g in forevers)
    assert all(ec.get_task(tid).status == TaskStatus.NEW for tid in tids)


def test_release_ends_every_resource_released_after_an_abort(
    ec: ExperimentController, caplog: pytest.LogCaptureFixture
) -> None:
    node, apps = node_with_error_apps(ec)
    bad_release = ec.register_resource("BadRelease")
    ec.deploy()
    ec.wait_finished(apps, timeout=30)
    assert ec.abort is True
    with caplog.at_level(logging.WARNING, logger="ExperimentController"):
        ec.release(timeout=30)
    everything = [node, *apps, bad_release]
    assert all(ec.state(g) == ResourceState.RELEASED for g in everything)
    assert not [r for r in caplog.records if "no worker released" in r.getMessage()], (
        "release was forced by the controller: no worker released the RMs"
    )


def test_a_resource_whose_release_raises_still_ends_released(
    ec: ExperimentController, caplog: pytest.LogCaptureFixture
) -> None:
    bad = ec.register_resource("BadRelease")
    plain = ec.register_resource("Plain")
    ec.deploy()
    ec.wait_started([bad], timeout=30)
    ec.wait_finished([plain], timeout=30)
    with caplog.at_level(logging.WARNING, logger="ExperimentController"):
        ec.release(timeout=30)
    assert ec.state(bad) == ResourceState.RELEASED
    assert ec.state(plain) == ResourceState.RELEASED
    assert ec.get_resource(bad).release_time is not None
    assert ec.failure_level == FailureLevel.OK
    assert not [r for r in caplog.records if "no worker released" in r.getMessage()]


def test_an_ec_failure_fails_the_controller_and_shutdown_raises() -> None:
    controller = ExperimentController(nthreads=4)
    try:
        controller.set_ec_failure("x")
        assert controller.failure_level == FailureLevel.EC_FAILURE
        assert controller.ecstate == ECState.FAILED
        assert controller.abort is True
        with pytest.raises(ECFailureError):
            controller.shutdown()
    finally:
        controller._stop_machinery()
