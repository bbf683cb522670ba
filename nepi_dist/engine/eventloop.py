"""The worker's event loop: due ETA tasks fired without kombu's one-second pause.

kombu's event loop fires at most 10 due timers per iteration
(``Hub.fire_timers(max_timers=10)``) and, when it stopped at that limit with
more timers already due, asks to poll for up to ``min_delay`` = 1 s before the
next iteration.  On a busy socket the poll returns at once; on a quiet broker
(every ETA message already received, the queue empty) it sleeps the full
second.  A worker holding hundreds of ETA tasks due in the same second then
runs them 10 per second: a burst of condition delays, or the revoked ETA
tasks left after an abort, is drained seconds late.

:class:`TimerCatchUp` is a worker bootstep that wraps the hub's
``fire_timers``: when a timer is still due after an iteration fired its share,
the loop comes straight back (poll timeout 0) instead of sleeping.  Every
nepi_dist app adds it (:func:`nepi_dist.engine.celery_app.create_app`), so ``nepi-dist
worker``, ``celery -A nepi_dist.engine.startup worker`` and the embedded worker all
run with it.
"""

from __future__ import annotations

import time
from typing import Any

from celery import bootsteps


def catch_up(fire_timers: Any, queue: list[Any]) -> Any:
    """Wrap a hub's ``fire_timers`` (reading its timer ``queue``) to return 0 while a timer is due."""

    if getattr(fire_timers, "catches_up", False):
        return fire_timers  # a hub reused by a later worker of this process is wrapped once

    def fire(*args: Any, **kwargs: Any) -> float:
        delay = float(fire_timers(*args, **kwargs))
        if queue and queue[0][0] <= time.monotonic():
            return 0.0
        return delay

    fire.catches_up = True  # type: ignore[attr-defined]
    return fire


class TimerCatchUp(bootsteps.StartStopStep):
    """Worker bootstep: the event loop keeps firing while ETA timers are due (see module docstring)."""

    requires = ("celery.worker.components:Hub",)
    label = "nepi timer catch-up"

    def create(self, w: Any) -> None:
        hub = getattr(w, "hub", None)
        if hub is not None:  # no event loop (e.g. a green pool): nothing to wrap
            hub.fire_timers = catch_up(hub.fire_timers, hub.timer._queue)
