"""The FailureManager: fail fast in O(1), and the slow safety net.

Transitions maintain the run's failure level and push the failing guid on
the run's alarm list; the manager blocks on that one key (no scan of the
resources).  On alarm it revokes every pending action of the run and drops
the timers: workers also refuse any action of an aborted run, so a task a
revoke missed still does nothing.

Between alarms, every ``sweep`` seconds, it publishes timers that came
within the ETA horizon and re-publishes actions left in the outbox by a
worker that died between deciding and publishing them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import redis

from .store import FailureLevel

if TYPE_CHECKING:
    from .context import RunContext

SHUTDOWN = "shutdown"


class FailureManager:
    """Watches one run from the controller process."""

    def __init__(self, ctx: RunContext, sweep: float = 1.0) -> None:
        self._ctx = ctx
        self._sweep = sweep
        self._stop = threading.Event()
        self._aborted = False
        self._log = logging.getLogger("nepi_dist.failure")
        self._thread = threading.Thread(target=self._loop, name="nepi-failure", daemon=True)

    def start(self) -> FailureManager:
        self._thread.start()
        return self

    def _loop(self) -> None:
        store = self._ctx.store
        while not self._stop.is_set():
            try:
                alarm = store.pop_alarm(self._sweep)
                if self._stop.is_set():
                    break
                if alarm is not None and alarm != SHUTDOWN and not self._aborted:
                    self.on_abort(alarm)
                self.sweep()
            except redis.RedisError as exc:
                if self._stop.is_set():
                    break
                self._log.warning("failure manager: %s", exc)
                self._stop.wait(self._sweep)
            except Exception:  # the loop boundary: record and keep watching
                self._log.exception("failure manager error")

    def on_abort(self, guid: str) -> None:
        """Revoke every pending action once a critical RM failed."""
        self._aborted = True
        store = self._ctx.store
        level = store.failure_level()
        dropped = self._ctx._drop_pending()
        self._log.error(
            "critical resource %s failed (failure level %s): aborting, %d pending actions revoked",
            guid, level, dropped,
        )

    def sweep(self) -> None:
        """Publish timers now within the horizon and stale outbox entries."""
        ctx = self._ctx
        store = ctx.store
        if store.failure_level() != FailureLevel.OK:
            return
        due = store.pop_timers(store.now() + ctx._horizon)
        if due:
            ctx._dispatch(due, from_outbox=True)
        stale = store.stale_outbox(older_than=max(2.0, self._sweep))
        if stale:
            self._log.warning("re-publishing %d actions left in the outbox", len(stale))
            ctx._dispatch(stale, from_outbox=True)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self._ctx.store.ring_alarm(SHUTDOWN)
        self._thread.join(10)
