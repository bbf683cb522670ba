"""The FailureManager: the controller hears of a critical failure at once.

Transitions maintain the run's failure level and push the failing guid on
the run's alarm list; the manager blocks on that one key (no scan of the
resources).  On alarm it tells the user and drops and revokes every pending
action of the run.  It only watches: the workers' keepers
(:mod:`nepi_dist.engine.keeper`) revoke an aborted run's actions, publish its timers
and re-send its outbox whether or not a controller is attached, and workers
refuse any action of an aborted run, so a task a revoke missed still does
nothing.  Dropping is one atomic step, so a keeper and this manager doing it
both do no harm.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from nepi_dist.engine.context import RunContext

SHUTDOWN = "shutdown"


class FailureManager:
    """Watches one run's alarm list from the controller process."""

    def __init__(self, ctx: RunContext, poll: float = 1.0) -> None:
        self._ctx = ctx
        self._poll = poll
        self._stop = threading.Event()
        self._aborted = False
        self._log = logging.getLogger("nepi_dist.engine.failure")
        self._thread = threading.Thread(target=self._loop, name="nepi-failure", daemon=True)

    def start(self) -> FailureManager:
        self._thread.start()
        return self

    def _loop(self) -> None:
        store = self._ctx.store
        while not self._stop.is_set():
            try:
                alarm = store.pop_alarm(self._poll)
                if self._stop.is_set():
                    break
                if alarm is not None and alarm != SHUTDOWN and not self._aborted:
                    self.on_abort(alarm)
            except redis.RedisError as exc:
                if self._stop.is_set():
                    break
                self._log.warning("failure manager: %s", exc)
                self._stop.wait(self._poll)
            except Exception:  # the loop boundary: record and keep watching
                self._log.exception("failure manager error")

    def on_abort(self, guid: str) -> None:
        """Revoke every pending action once a critical RM failed."""
        self._aborted = True
        store = self._ctx.store
        level = store.failure_level()
        dropped = self._ctx._drop_pending(for_abort=True)
        self._log.error(
            "critical resource %s failed (failure level %s): aborting, %d pending actions revoked",
            guid, level, dropped,
        )

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            with contextlib.suppress(redis.RedisError):
                self._ctx.store.ring_alarm(SHUTDOWN)  # wakes its blocking read now
            self._thread.join(10)
