"""The Celery app factory, and the settings every nepi_dist worker runs with.

Settings chosen against the known Celery + Redis pitfalls (see README):

* JSON only (``accept_content``), never pickle;
* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task held by a
  worker that dies is delivered again; the action claim makes the second
  delivery of a finished action a no-op;
* ``visibility_timeout`` (default 300 s) above the ETA horizon (default 60 s):
  an action due farther away waits in the run's Redis timer set and is
  published only when it comes within the horizon, so no ETA message is held
  past the visibility timeout (no duplicate delivery) and far-future work
  never piles up in one worker's memory;
* ``worker_prefetch_multiplier=1``: a worker reserves one due task at a time;
* every worker runs the :class:`~nepi_dist.hub.TimerCatchUp` step: ETA tasks
  due together run at once, not 10 per second.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from .routing import POOL_QUEUE

REDIS_URL_ENV = "NEPI_DIST_REDIS_URL"
VISIBILITY_ENV = "NEPI_DIST_VISIBILITY_TIMEOUT"
HORIZON_ENV = "NEPI_DIST_ETA_HORIZON"
DEFAULT_VISIBILITY = 300.0


def settings(redis_url: str, **overrides: Any) -> dict[str, Any]:
    """Return the Celery settings for a broker at ``redis_url``."""
    visibility = float(overrides.pop("visibility_timeout", os.environ.get(VISIBILITY_ENV, DEFAULT_VISIBILITY)))
    horizon = float(overrides.pop("eta_horizon", os.environ.get(HORIZON_ENV, visibility / 5)))
    if horizon >= visibility:
        raise ValueError(f"ETA horizon {horizon}s must be below the visibility timeout {visibility}s")
    conf: dict[str, Any] = {
        "broker_url": redis_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": POOL_QUEUE,
        "task_create_missing_queues": True,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, int(visibility / 10)),
            "unacked_restore_throttle": 1,
        },
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "nepi_redis_url": redis_url,
        "nepi_eta_horizon": horizon,
        "nepi_visibility_timeout": visibility,
    }
    conf.update(overrides)
    return conf


def create_app(redis_url: str | None = None, **overrides: Any) -> Celery:
    """Return a Celery app on ``redis_url`` (default: $NEPI_DIST_REDIS_URL) with nepi's tasks."""
    from .hub import TimerCatchUp
    from .tasks import register_tasks

    url = redis_url or os.environ.get(REDIS_URL_ENV) or "redis://127.0.0.1:6379/0"
    app = Celery("nepi_dist", set_as_current=False)
    app.conf.update(settings(url, **overrides))
    app.steps["worker"].add(TimerCatchUp)
    register_tasks(app)
    return app
