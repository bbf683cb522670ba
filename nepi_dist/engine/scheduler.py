"""Tasks as NEPI's ``schedule``/``get_task`` know them.

A plain callable scheduled on the controller (a lambda in the user's
script) runs in the controller process at its date, on a heap-ordered timer
thread that sleeps on a condition until the next date (no polling).  An RM
action runs on a worker; its :class:`RemoteTask` reads status and result
from the store.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nepi_dist.engine.store import Store


class TaskStatus:
    """Status of a scheduled task (NEPI's values)."""

    NEW = 0
    DONE = 1
    ERROR = 2


_BY_NAME = {"NEW": TaskStatus.NEW, "DONE": TaskStatus.DONE, "ERROR": TaskStatus.ERROR}

#: The longest one sleep of the timer thread (``Condition.wait`` refuses more).
MAX_WAIT = threading.TIMEOUT_MAX


class Task:
    """A callable scheduled in the controller process."""

    def __init__(self, tid: int, timestamp: float, callback: Callable[[], Any]) -> None:
        self.id = tid
        self.timestamp = timestamp
        self.callback = callback
        self.status = TaskStatus.NEW
        self.result: Any = None

    def __repr__(self) -> str:
        return f"<Task {self.id} status={self.status}>"


class RemoteTask:
    """A tracked RM action run by a worker; status and result are read live."""

    def __init__(self, store: Store, tid: str) -> None:
        self.id = tid
        self._store = store

    def _record(self) -> tuple[int, Any]:
        rec = self._store.task_status(self.id)
        if rec is None:
            return TaskStatus.NEW, None
        return _BY_NAME[rec[0]], rec[1]

    @property
    def status(self) -> int:
        return self._record()[0]

    @property
    def result(self) -> Any:
        return self._record()[1]

    def __repr__(self) -> str:
        return f"<RemoteTask {self.id}>"


class LocalScheduler:
    """Runs plain callables at their dates on a small thread pool."""

    def __init__(self, nthreads: int, logger: logging.Logger) -> None:
        self._heap: list[tuple[float, int, Task]] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._stop = False
        self._logger = logger
        self._pool = ThreadPoolExecutor(max_workers=max(1, nthreads), thread_name_prefix="nepi-local")
        self._thread = threading.Thread(target=self._loop, name="nepi-scheduler", daemon=True)
        self._thread.start()

    def schedule(self, delay: float, callback: Callable[[], Any]) -> Task:
        with self._cond:
            task = Task(next(self._ids), time.time() + delay, callback)
            heapq.heappush(self._heap, (task.timestamp, task.id, task))
            self._cond.notify()
        return task

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0][0] > time.time()):
                    # A far date (year 9999) is beyond what one wait can sleep: wait at most
                    # TIMEOUT_MAX and look again (a larger timeout raises OverflowError).
                    timeout = min(self._heap[0][0] - time.time(), MAX_WAIT) if self._heap else None
                    self._cond.wait(timeout)
                if self._stop:
                    return
                task = heapq.heappop(self._heap)[2]
            self._pool.submit(self._execute, task)

    def _execute(self, task: Task) -> None:
        try:
            task.result = task.callback()
            task.status = TaskStatus.DONE
        except Exception:
            task.result = traceback.format_exc()
            task.status = TaskStatus.ERROR
            self._logger.error("Error occurred while executing task %s: %s", task.id, task.result)

    def drop_pending(self) -> None:
        """Forget every callable not yet started."""
        with self._cond:
            self._heap.clear()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
