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
  due together run at once, not 10 per second;
* a lost broker is retried for ever, with kombu's backoff (2 s, 4 s, ... up to
  30 s between attempts), at start-up and after a connection loss
  (``broker_connection_max_retries=None``), and the Redis transport is
  :class:`RedisTransport`, whose channel survives being closed after Redis
  went away (a worker otherwise exits when Redis restarts, see the class).
"""

from __future__ import annotations

import logging
import os
from queue import Empty
from typing import Any
from urllib.parse import urlparse

from celery import Celery
from kombu.transport import redis as kombu_redis

from .routing import POOL_QUEUE

REDIS_URL_ENV = "NEPI_DIST_REDIS_URL"
VISIBILITY_ENV = "NEPI_DIST_VISIBILITY_TIMEOUT"
HORIZON_ENV = "NEPI_DIST_ETA_HORIZON"
DEFAULT_VISIBILITY = 300.0

log = logging.getLogger("nepi_dist.app")


class _RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, whose ``close`` finishes when Redis has gone away.

    ``Channel.close`` first reads the reply of a BRPOP still outstanding
    (kombu PR #1733: a message the server already popped must not be lost).
    When Redis is gone that read raises a connection error and ``close``
    stops half-way: the channel is not marked closed, its pools are not
    dropped, its unacknowledged messages are not handed back.

    Celery's consumer, on a lost connection
    (``Consumer.on_connection_error_after_connected``), first calls
    ``Connection.collect()``: it swallows that error, tries the transport's
    other channels but stops at the first whose close raises too (the
    remote-control channel, deleting its fanout queue), and detaches the
    transport from its ``kombu.Connection`` (``transport.client = None``).
    Then it calls ``Connection.close()``, which closes the half-closed
    default channel again.  That second close goes on to hand back the
    unacknowledged messages, rebuilds a redis-py pool from the detached
    transport (``_connparams``: ``self.connection.client.hostname``) and
    raises ``AttributeError: 'NoneType' object has no attribute
    'hostname'``, which is not a connection error: the worker logs
    "Unrecoverable error" and exits.  It happens when the connection is lost
    while the consumer waits in BRPOP and holds unacknowledged messages
    (ETA tasks, running tasks): a worker in the middle of a run
    (tests/test_broker_restart.py shows it on kombu alone).

    Here a connection error while reading that reply ends the poll (a dead
    socket has no reply to give; kombu itself drops the connection), and
    ``close`` goes on once to its end, while the transport is still attached.
    Handing back the unacknowledged messages then fails with a connection
    error, which the callers ignore: the messages stay in Redis' unacked set,
    and the visibility-timeout sweep (``restore_visible``) delivers them again.
    Any other error still propagates.
    """

    def close(self) -> None:
        if self._in_poll and not self.closed:
            self._closing = True  # as kombu's close does before this read
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection_errors as exc:
                log.warning("the broker went away while a BRPOP was outstanding (%r): closing the channel", exc)
        super().close()


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`_RedisChannel`; the broker of every nepi_dist app on ``redis://``.

    Chosen with Celery's ``broker_transport`` (a class path), so kombu names
    the broker ``nepi_dist.app:RedisTransport://host:port/db`` in its logs.
    ``rediss://`` and sentinel URLs keep kombu's own transport: giving them
    this one would drop the TLS defaults kombu derives from the scheme.
    """

    Channel = _RedisChannel


#: The ``broker_transport`` of an app whose broker URL is ``redis://``.
REDIS_TRANSPORT = f"{__name__}:{RedisTransport.__name__}"


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
        # A worker waits for its broker as long as it takes: at start-up (a worker
        # started before its Redis) and after a connection loss (a Redis restart).
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
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
    if urlparse(redis_url).scheme == "redis":
        conf["broker_transport"] = REDIS_TRANSPORT
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
