"""NEPI's scheduling tests: ``schedule(date, callback, track)`` and ``get_task``.

A plain callable runs in the controller process; an RM method (possibly in a
``functools.partial``) becomes a Celery task run by a worker.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from nepi_dist import ExperimentController, TaskStatus
from nepi_dist.engine.scheduler import RemoteTask, Task
from nepi_dist.model.timefuncs import format_date


def settled(ec: ExperimentController, tid: Any, timeout: float = 10.0) -> Task | RemoteTask:
    """Return the tracked task once its status left NEW.

    There is no event stream for task status: this re-reads the task record
    (in memory for a callable, in Redis for an RM action) every 50 ms until a
    deadline.
    """
    task = ec.get_task(tid)
    assert task is not None, f"task {tid} is not tracked"
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while task.status == TaskStatus.NEW:
        assert time.monotonic() < deadline, f"task {tid} still NEW after {timeout}s"
        pause.wait(0.05)
    return task


def deployed_plain(ec: ExperimentController) -> int:
    guid = ec.register_resource("Plain")
    ec.deploy()
    ec.wait_deployed(guid, timeout=10)
    return guid


def test_a_tracked_callable_runs_in_the_controller_and_reports_done_with_its_result(
    ec: ExperimentController,
) -> None:
    ran = threading.Event()
    where: list[int] = []

    def myfunc() -> str:
        where.append(threading.get_ident())
        ran.set()
        return "hola!"

    tid = ec.schedule("0s", myfunc, track=True)
    assert ran.wait(10), "the callable never ran"
    task = settled(ec, tid)
    assert isinstance(task, Task)
    assert task.status == TaskStatus.DONE
    assert task.result == "hola!"
    assert len(where) == 1  # ran exactly once, in this process


def test_a_callable_scheduled_in_4s_runs_between_4_and_5_seconds_later(ec: ExperimentController) -> None:
    ran = threading.Event()

    def get_time() -> float:
        now = time.time()
        ran.set()
        return now

    schedule_time = time.time()
    tid = ec.schedule("4s", get_time, track=True)
    assert ran.wait(10), "the callable never ran"
    task = settled(ec, tid)
    assert task.status == TaskStatus.DONE
    delta = task.result - schedule_time
    assert 4.0 <= delta < 5.0, delta


def test_a_callable_that_raises_reports_error_with_its_traceback(ec: ExperimentController) -> None:
    ran = threading.Event()

    def broken() -> None:
        ran.set()
        raise RuntimeError("bad task on purpose")

    tid = ec.schedule("0s", broken, track=True)
    assert ran.wait(10), "the callable never ran"
    task = settled(ec, tid)
    assert task.status == TaskStatus.ERROR
    assert "Traceback" in task.result
    assert "RuntimeError: bad task on purpose" in task.result


def test_a_callable_scheduled_at_an_absolute_date_runs_at_that_date(ec: ExperimentController) -> None:
    ran = threading.Event()

    def get_time() -> float:
        now = time.time()
        ran.set()
        return now

    schedule_time = time.time()
    date = format_date(schedule_time + 1.0)
    assert len(date) == 20 and date.isdigit()
    tid = ec.schedule(date, get_time, track=True)
    assert ran.wait(10), "the callable never ran"
    task = settled(ec, tid)
    assert task.status == TaskStatus.DONE
    delta = task.result - schedule_time
    assert 0.999 <= delta < 1.5, delta


def test_a_tracked_rm_method_becomes_a_celery_task_that_reports_done_with_its_json_result(
    ec: ExperimentController,
) -> None:
    guid = deployed_plain(ec)
    rm = ec.get_resource(guid)
    tid = ec.schedule("0.2s", functools.partial(rm.echo, {"x": 1}), track=True)
    task = ec.get_task(tid)
    assert isinstance(task, RemoteTask), "an RM method is run by a worker, not in the controller"
    task = settled(ec, tid)
    assert task.status == TaskStatus.DONE
    assert task.result == {"guid": guid, "value": {"x": 1}}


def test_a_tracked_rm_method_that_raises_reports_error_with_the_error_text(ec: ExperimentController) -> None:
    guid = deployed_plain(ec)
    rm = ec.get_resource(guid)
    tid = ec.schedule("0.2s", rm.boom, track=True)
    task = settled(ec, tid)
    assert isinstance(task, RemoteTask)
    assert task.status == TaskStatus.ERROR
    assert "ValueError: boom on purpose" in task.result


def test_an_untracked_task_is_not_retrievable(ec: ExperimentController) -> None:
    ran = threading.Event()
    local_tid = ec.schedule("0s", ran.set)
    assert ran.wait(10), "the callable never ran"
    assert ec.get_task(local_tid) is None

    guid = deployed_plain(ec)
    remote_tid = ec.schedule("0s", functools.partial(ec.get_resource(guid).echo, 1))
    assert remote_tid is not None
    assert ec.get_task(remote_tid) is None


def test_the_controller_keeps_only_tracked_tasks(ec: ExperimentController) -> None:
    guid = deployed_plain(ec)
    rm = ec.get_resource(guid)
    assert len(ec._tasks) == 0
    tracked = [
        ec.schedule("0s", lambda: 1, track=True),
        ec.schedule("0s", functools.partial(rm.echo, 2), track=True),
    ]
    ec.schedule("0s", lambda: 3)
    ec.schedule("0s", functools.partial(rm.echo, 4))
    assert len(ec._tasks) == 2
    assert sorted(map(str, ec._tasks)) == sorted(map(str, tracked))
    for tid in tracked:
        assert settled(ec, tid).status == TaskStatus.DONE
