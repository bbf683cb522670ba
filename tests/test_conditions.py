"""Conditions on deploy, start, stop and set (NEPI's test_*_with_condition).

Every timestamp compared here is a Redis-clock float read from the RM
(``start_time``, ``ready_time``, ...), so the comparisons do not depend on
which process or thread recorded them.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals

from nepi_dist import (
    ExperimentController,
    FailureLevel,
    ResourceAction,
    ResourceFactory,
    ResourceState,
    WaitTimeoutError,
)
from nepi_dist.engine.batch import BATCH_TASK
from nepi_dist.engine.context import ACTION_TASK

from .conftest import connected
from .rms import Plain


class ConditionsAnnounce(Plain):
    """A Plain that stops itself when its ``label`` is set while STARTED.

    The stop is an event on the run's stream, so a test can wait for the set
    with ``ec.wait_finished`` and read when it happened from ``stop_time``.
    """

    _rtype = "ConditionsAnnounce"

    def set(self, name: str, value: Any) -> Any:
        result = super().set(name, value)
        if name == "label" and self.state == ResourceState.STARTED:
            self.set_stopped()
        return result


ResourceFactory.register_type(ConditionsAnnounce)


def plain(ec: ExperimentController, runtime: float = 0.0, rtype: str = "Plain") -> int:
    guid = ec.register_resource(rtype)
    ec.set(guid, "runtime", runtime)
    return guid


def test_a_start_condition_with_a_delay_starts_the_rm_that_long_after_the_other_started(
    ec: ExperimentController,
) -> None:
    app1 = plain(ec)
    app2 = plain(ec)
    ec.register_condition(app2, ResourceAction.START, app1, ResourceState.STARTED, "2s")
    ec.deploy()
    ec.wait_finished([app1, app2], timeout=20)
    assert ec.state(app1) == ResourceState.FINISHED
    assert ec.state(app2) == ResourceState.FINISHED
    delta = ec.get_resource(app2).start_time - ec.get_resource(app1).start_time
    assert 2.0 <= delta < 2.1, delta


def in_a_row(ec: ExperimentController, a_after: str, b_after: str) -> tuple[int, int, int]:
    """Three Plain RMs: a starts ``a_after`` after first STARTED, b ``b_after`` after a STARTED."""
    first, a, b = plain(ec), plain(ec), plain(ec)
    ec.register_condition(a, ResourceAction.START, first, ResourceState.STARTED, a_after)
    ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED, b_after)
    return first, a, b


class Deliveries:
    """Counts the deliveries of each (guid, method) action to the in-process worker."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, sender: Any = None, args: Any = None, **_: Any) -> None:
        name = getattr(sender, "name", None)
        if name == ACTION_TASK:
            payloads = [args[3]]
        elif name == BATCH_TASK:
            payloads = [item[1] for item in args[2]]
        else:
            return
        with self._lock:
            for p in payloads:
                self.counts[(int(p["g"]), str(p["m"]))] += 1


@pytest.fixture
def deliveries() -> Iterator[Deliveries]:
    with connected(signals.task_prerun, Deliveries()) as watcher:
        yield watcher


def test_an_rm_waiting_on_a_delayed_condition_is_woken_when_the_delay_is_over_not_before(
    ec: ExperimentController, deliveries: Deliveries
) -> None:
    # b's start runs with the group, finds a not STARTED yet (a waits 0.3 s on first) and parks.
    first, a, b = in_a_row(ec, "0.3s", "1s")
    ec.deploy()
    ec.wait_finished([first, a, b], timeout=15)
    delta = ec.get_resource(b).start_time - ec.get_resource(a).start_time
    assert 1.0 <= delta < 1.1, delta
    # Once when the group started (parks), once woken by a's STARTED, due 1 s later: no
    # third run in between that would only find the delay not over and send itself again.
    assert deliveries.counts[(b, "start_with_conditions")] == 2, deliveries.counts


def test_a_wait_beyond_the_eta_horizon_is_held_in_the_run_s_timers_once_woken() -> None:
    ctl = ExperimentController(celery_settings={"visibility_timeout": 4, "eta_horizon": 1}, nthreads=8)
    try:
        # b's start parks on a (which waits 0.3 s on first); a's STARTED wakes it 2.5 s ahead.
        _, a, b = in_a_row(ctl, "0.3s", "2.5s")
        ctl.deploy()
        ctl.wait(a, ResourceState.STARTED, timeout=10)
        started = ctl.get_resource(a).start_time
        timers = ctl.store.client.zrange(ctl.store.keys.timers, 0, -1, withscores=True)
        held = [(json.loads(member)["p"], due) for member, due in timers]
        assert [(p["g"], p["m"]) for p, _ in held] == [(b, "start_with_conditions")]
        assert held[0][1] == pytest.approx(started + 2.5, abs=1e-5)
        ctl.wait_finished(b, timeout=10)
        delta = ctl.get_resource(b).start_time - started
        assert 2.5 <= delta < 2.7, delta
    finally:
        ctl.shutdown()


def test_a_stop_condition_stops_the_rm_about_1s_after_the_other_started_while_that_one_keeps_running(
    ec: ExperimentController,
) -> None:
    a = ec.register_resource("Forever")
    b = ec.register_resource("Forever")
    ec.register_condition(b, ResourceAction.STOP, a, ResourceState.STARTED, "1s")
    ec.deploy()
    ec.wait_finished(b, timeout=15)
    assert ec.state(b) == ResourceState.STOPPED
    assert ec.state(a) == ResourceState.STARTED
    rma, rmb = ec.get_resource(a), ec.get_resource(b)
    delta = rmb.stop_time - rma.start_time
    assert 1.0 <= delta < 1.25, delta
    assert rma.stop_time is None and rma.finish_time is None
    ec.release()
    assert ec.state(a) == ResourceState.RELEASED
    assert ec.state(b) == ResourceState.RELEASED


def test_a_start_condition_on_finished_starts_the_rm_only_after_the_other_finished(
    ec: ExperimentController,
) -> None:
    app1 = plain(ec, runtime=0.5)
    app2 = plain(ec)
    ec.register_condition(app2, ResourceAction.START, app1, ResourceState.FINISHED)
    ec.deploy()
    ec.wait_finished([app1, app2], timeout=15)
    assert ec.state(app1) == ResourceState.FINISHED
    assert ec.state(app2) == ResourceState.FINISHED
    rm1, rm2 = ec.get_resource(app1), ec.get_resource(app2)
    assert rm1.finish_time - rm1.start_time >= 0.5
    assert rm2.start_time >= rm1.finish_time


def test_a_start_condition_on_stopped_waits_for_the_other_rm_to_be_stopped(ec: ExperimentController) -> None:
    a = ec.register_resource("Forever")
    b = plain(ec)
    ec.register_condition(b, ResourceAction.START, a, ResourceState.STOPPED)
    ec.deploy()
    ec.wait_started(a, timeout=10)
    ec.wait_deployed(b, timeout=10)
    assert ec.state(b) == ResourceState.READY
    ec.stop(a)
    ec.wait_finished(b, timeout=10)
    assert ec.state(a) == ResourceState.STOPPED
    assert ec.state(b) == ResourceState.FINISHED
    assert ec.get_resource(b).start_time >= ec.get_resource(a).stop_time


def test_a_deploy_condition_deploys_the_rm_only_after_the_other_is_ready(ec: ExperimentController) -> None:
    a = plain(ec, rtype="SlowDeploy")
    b = plain(ec)
    ec.register_condition(b, ResourceAction.DEPLOY, a, ResourceState.READY)
    ec.deploy()
    ec.wait_finished([a, b], timeout=15)
    rma, rmb = ec.get_resource(a), ec.get_resource(b)
    assert ec.get(a, "rounds") == 0  # a rescheduled its deploy 3 times
    assert rmb.discover_time >= rma.ready_time
    assert rmb.ready_time >= rma.ready_time


def test_set_with_conditions_sets_every_target_once_the_condition_holds_and_the_target_is_started(
    ec: ExperimentController,
) -> None:
    src = plain(ec, runtime=30)
    t1 = plain(ec, runtime=30, rtype="ConditionsAnnounce")
    t2 = plain(ec, runtime=30, rtype="ConditionsAnnounce")
    late = plain(ec, runtime=30, rtype="ConditionsAnnounce")
    targets = [t1, t2, late]
    ec.register_condition(late, ResourceAction.START, src, ResourceState.STARTED, "2s")
    ec.set_with_conditions("label", "set!", targets, src, ResourceState.STARTED, "1s")
    ec.deploy()
    ec.wait_started([src, t1, t2], timeout=10)
    assert [ec.get(g, "label") for g in targets] == [None, None, None]

    ec.wait_finished(targets, timeout=15)  # each target stops when its label is set
    assert [ec.get(g, "label") for g in targets] == ["set!", "set!", "set!"]
    assert [ec.state(g) for g in targets] == [ResourceState.STOPPED] * 3
    src_start = ec.get_resource(src).start_time
    for g in (t1, t2):
        set_at = ec.get_resource(g).stop_time - src_start
        assert 1.0 <= set_at < 1.5, set_at
    rm_late = ec.get_resource(late)
    assert rm_late.start_time - src_start >= 2.0
    assert rm_late.stop_time >= rm_late.start_time
    assert ec.state(src) == ResourceState.STARTED


def test_a_condition_on_a_failed_non_critical_rm_is_met(ec: ExperimentController) -> None:
    a = ec.register_resource("FailingStart")
    ec.set(a, "critical", False)
    b = plain(ec)
    ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED)
    ec.deploy()
    ec.wait_finished([a, b], timeout=10)
    assert ec.state(a) == ResourceState.FAILED
    assert ec.state(b) == ResourceState.FINISHED
    assert not ec.abort
    assert ec.get_resource(b).start_time >= ec.get_resource(a).failed_time


def test_a_condition_on_a_failed_critical_rm_aborts_the_run_and_the_waiting_rm_never_starts(
    ec: ExperimentController,
) -> None:
    """NEPI fails the waiting RM when it next re-checks; here the abort comes first.

    The critical failure and the abort mark are one atomic step, and a worker refuses
    every action of an aborted run, so the waiting RM's start never runs at all.
    """
    first = plain(ec, runtime=30)
    a = ec.register_resource("FailingStart")
    b = plain(ec)
    # a fails 0.3 s after the group starts: by then b waits for a to be STARTED.
    ec.register_condition(a, ResourceAction.START, first, ResourceState.STARTED, "0.3s")
    ec.register_condition(b, ResourceAction.START, a, ResourceState.STARTED)
    ec.deploy()
    ec.wait_started(b, timeout=10)  # returns on the abort
    assert ec.state(a) == ResourceState.FAILED
    assert ec.abort
    assert ec.failure_level == FailureLevel.RM_FAILURE
    with pytest.raises(WaitTimeoutError):
        ec.wait(b, ResourceState.STARTED, timeout=1.5)
    assert ec.state(b) == ResourceState.READY
    assert ec.get_resource(b).start_time is None


@pytest.mark.serial
def test_a_met_condition_wakes_the_waiting_rm_at_once_without_polling(ec: ExperimentController) -> None:
    # a starts 0.35 s after the group starts; b, waiting on a from the group start,
    # must start right after a, not at the next tick of a 1 s poll.
    first, a, b = in_a_row(ec, "0.35s", "0s")
    ec.deploy()
    ec.wait_finished([first, a, b], timeout=10)
    rm_first, rma, rmb = ec.get_resource(first), ec.get_resource(a), ec.get_resource(b)
    assert rma.start_time - rm_first.start_time >= 0.35
    delta = rmb.start_time - rma.start_time
    assert 0.0 <= delta < 0.1, delta


def test_the_gate_judges_each_condition_of_an_action_as_the_check_script_does(ec: ExperimentController) -> None:
    """The gate's one read-only round trip gives the verdicts CHECK would (CHECK says 'parked' for unmet)."""
    started, finished, ready, optional, critical, target = (plain(ec) for _ in range(6))
    ec.set(optional, "critical", False)
    through = {started: [ResourceState.STARTED], finished: [ResourceState.STARTED, ResourceState.FINISHED],
               ready: [ResourceState.READY], optional: [ResourceState.FAILED], critical: [ResourceState.FAILED]}
    for guid, states in through.items():
        for state in states:
            ec.store.transition(guid, state, horizon=60.0)
    groups = [[started, finished], [started, ready], [optional], [critical, started], [finished]]
    for group in groups:
        ec.register_condition(target, ResourceAction.START, group, ResourceState.STARTED)

    view = ec.store.gate(target, ResourceAction.START)
    checks = [ec.store.check(group, ResourceState.STARTED, None) for group in groups]

    assert view.state == ResourceState.NEW
    assert [c.outcome for c in view.checks] == ["ok", "unmet", "ok", "failed", "ok"]
    assert [c.outcome for c in checks] == ["ok", "parked", "ok", "failed", "ok"]
    t_started = ec.get_resource(started).start_time
    t_finished = ec.get_resource(finished).start_time  # the time it reached STARTED, not FINISHED
    assert t_started is not None and t_finished is not None
    assert view.checks[0].last == checks[0].last == pytest.approx(max(t_started, t_finished))
    assert view.checks[4].last == checks[4].last == pytest.approx(t_finished)
    assert view.checks[2].last == checks[2].last == 0.0  # a failed optional RM holds nothing back
    assert not ec.store.client.zcard(ec.store.keys.wait(ready)), "the gate parks nothing"


def test_a_deploy_let_through_by_its_gate_is_refused_for_the_state_the_gate_read(ec: ExperimentController) -> None:
    """deploy() checks the state its gate handed over: past READY it is an error, and nothing changes."""
    guid = plain(ec, runtime=30.0)
    ec.deploy([guid])
    ec.wait_started([guid], timeout=10)
    handle = ec.get_resource(guid)
    handle.deploy_with_conditions()
    assert ec.state(guid) == ResourceState.STARTED
    assert handle._gated_state is None, "the handed-over state is used once"
