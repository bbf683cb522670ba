"""The FailureManager: the controller hears of a critical failure at once.

Transitions maintain the run's failure level and push the failing guid on
the run's alarm list; the manager blocks on that one key (no scan of the
resources).  On alarm it tells the user and drops and revokes every pending
action of the run.  A second thread follows the run's event stream and logs
every RM that enters FAILED once, critical or not, with its type, host,
command and reason (:func:`nepi_dist.engine.report.describe`), wherever the
error was raised (in the RM's code or by the worker, e.g. an unknown type).  It only watches: the workers' keepers
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

from nepi_dist.engine.connection import redis_client
from nepi_dist.engine.report import describe, level_name, rows
from nepi_dist.engine.store import Store
from nepi_dist.model.state import ResourceState

if TYPE_CHECKING:
    from nepi_dist.engine.context import RunContext

SHUTDOWN = "shutdown"
#: The alarm ``nepi-dist abort`` rings: the run was aborted by a person, not by a failure.
ABORTED = "aborted"
#: Seconds the failure log blocks on the event stream at a time (and gives a lost Redis).
REPORT_BLOCK = 0.5


class FailureManager:
    """Watches one run's alarm list from the controller process."""

    def __init__(self, ctx: RunContext, poll: float = 1.0) -> None:
        self._ctx = ctx
        self._poll = poll
        self._stop = threading.Event()
        self._aborted = False
        self._log = logging.getLogger("nepi_dist.engine.failure")
        self._thread = threading.Thread(target=self._loop, name="nepi-failure", daemon=True)
        self._reporter = threading.Thread(target=self._report_failures, name="nepi-failure-log", daemon=True)

    def start(self) -> FailureManager:
        self._thread.start()
        self._reporter.start()
        return self

    def _report_failures(self) -> None:
        """Log every RM entering FAILED, once, from the event stream (blocking reads, no polling)."""
        # Its own client, quick to give up: once the controller stops (and an embedded Redis
        # with it) this thread ends within one blocking read, and nobody waits for it.
        url = str(self._ctx.app.conf.nepi_redis_url)
        store = Store(redis_client(url, bound=REPORT_BLOCK + 2), self._ctx.exp_id, self._ctx.run_id)
        last: str | None = None
        while not self._stop.is_set():
            try:
                if last is None:
                    last = store.last_event_id()
                    for row in rows(store):  # those failed before this controller watched
                        if row.state == ResourceState.FAILED:
                            self._log.error("FAILED %s", describe(row))
                failed = []
                for eid, fields in store.events(last, int(REPORT_BLOCK * 1000)):
                    last = eid
                    if int(fields.get("s", -1)) == ResourceState.FAILED and int(fields.get("g", -1)) > 0:
                        failed.append(int(fields["g"]))
                for row in rows(store, failed) if failed else []:
                    self._log.error("FAILED %s", describe(row))
            except redis.RedisError as exc:
                if self._stop.is_set():
                    break
                self._log.warning("failure log: %s", exc)
                self._stop.wait(self._poll)
            except Exception:  # the loop boundary: record and keep watching
                self._log.exception("failure log error")
                self._stop.wait(self._poll)
        store.client.connection_pool.disconnect()

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
        if guid == ABORTED:
            why = store.run_field("why") or "aborted with nepi-dist abort"
            self._log.error("run aborted (failure level %s): %s; %d pending actions revoked",
                            level_name(level), why, dropped)
            return
        found = rows(store, [int(guid)]) if guid.isdigit() else []
        what = describe(found[0]) if found else f"guid {guid}"
        self._log.error("critical resource failed, aborting the run (failure level %s, %d pending actions "
                        "revoked): %s", level_name(level), dropped, what)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            with contextlib.suppress(redis.RedisError):
                self._ctx.store.ring_alarm(SHUTDOWN)  # wakes its blocking read now
            self._thread.join(10)

