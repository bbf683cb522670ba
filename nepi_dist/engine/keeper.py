"""The run keeper: what a run needs while nobody acts on it, done by its workers.

Four things must happen in a run at times no action chooses: a timer beyond
the ETA horizon comes within it and must be published; an action left in the
outbox by a publisher that died must be re-sent; an action published but
never claimed a visibility timeout after it was due (its message was lost on
its way: kombu pops a message, then records it as unacknowledged, and a
consumer or a Redis that dies in between loses it) must be re-sent from the
run's ``sent`` hash; and once a critical RM has failed, every pending action
must be dropped and revoked.  None of it needs
the controller, whose process may be gone (a laptop closed after deploy):

* every worker process runs one :class:`Keeper` thread;
* the runs not yet released are listed in ``nepi:runs`` (:data:`~nepi_dist.engine.keys.RUNS_KEY`);
* for each, the keeper that holds the run's lease (``P:keeper``, taken when
  free, renewed every sweep) keeps it; when its worker dies or stalls, the
  lease runs out and another worker's keeper takes over.

The work of one sweep is idempotent (timers move to the outbox atomically, a
re-sent action's claim makes a second delivery a no-op, dropping the pending
set is one step), so even two keepers at once would do no harm.  The
controller's :class:`~nepi_dist.engine.failure.FailureManager` only watches: it
reports a failure to the user at once and revokes quickly, which a keeper
would do within one sweep anyway.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import redis

from nepi_dist.engine.keys import RUNS_KEY, parse_run_member
from nepi_dist.engine.store import FailureLevel

if TYPE_CHECKING:
    from nepi_dist.engine.context import RunContext
    from nepi_dist.engine.tasks import WorkerRuntime

log = logging.getLogger("nepi_dist.engine.keeper")

#: Seconds between two sweeps of the runs.
KEEP_EVERY = 0.5
#: Milliseconds a keeper's lease on a run lasts unless renewed (several sweeps).
LEASE_MS = 5000
#: Seconds an outbox entry waits for its own publisher before a keeper re-sends it.
OUTBOX_GRACE = 2.0
#: Seconds past its due time plus the visibility timeout a published action may stay unclaimed
#: before a keeper sends it again: by then kombu would have restored a message a worker held
#: (it restores 10 at a time, so a dead worker's many messages may come back later: the copy
#: the keeper sends then is a harmless duplicate, the claim runs the action once).
LOST_GRACE = 1.0


def keep(ctx: RunContext) -> None:
    """Do one sweep of a run: revoke once aborted, else publish due timers and stale outbox entries."""
    store = ctx.store
    if store.failure_level() != FailureLevel.OK:
        dropped = ctx._drop_pending(for_abort=True)
        if dropped:
            log.warning("run %s/%s aborted: %d pending actions dropped and revoked",
                        store.exp_id, store.run_id, dropped)
        return
    due = store.pop_timers(store.now() + ctx._horizon)
    if due:
        ctx._dispatch(due, from_outbox=True)
    stale = store.stale_outbox(older_than=OUTBOX_GRACE)
    if stale:
        log.warning("run %s/%s: re-publishing %d actions left in the outbox", store.exp_id, store.run_id, len(stale))
        ctx._dispatch(stale, from_outbox=True)
    lost = store.lost_sends(older_than=float(ctx._app.conf.nepi_visibility_timeout) + LOST_GRACE)
    if lost:
        log.warning("run %s/%s: re-publishing %d actions whose message was lost", store.exp_id, store.run_id,
                    len(lost))
        ctx._dispatch(lost, from_outbox=True)


class Keeper:
    """One worker process's keeper thread (see the module docstring)."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self._runtime = runtime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nepi-keeper", daemon=True)

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(KEEP_EVERY):
            try:
                self.sweep()
            except redis.RedisError as exc:
                log.warning("keeper: %s", exc)
            except Exception:  # the loop boundary: record and keep keeping
                log.exception("keeper error")

    def sweep(self) -> int:
        """Keep every run whose lease this worker holds; return how many it kept."""
        rt = self._runtime
        kept = 0
        for member in rt.client.zrange(RUNS_KEY, 0, -1):
            ids = parse_run_member(member)
            if ids is None:
                continue
            ctx = rt.context(*ids)
            if ctx.store.take_lease(rt.worker_id, LEASE_MS):
                keep(ctx)
                kept += 1
        return kept
