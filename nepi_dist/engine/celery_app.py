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
* every worker runs the :class:`~nepi_dist.engine.eventloop.TimerCatchUp` step: ETA tasks
  due together run at once, not 10 per second;
* a lost broker is retried for ever, with kombu's backoff (2 s, 4 s, ... up to
  30 s between attempts), at start-up and after a connection loss
  (``broker_connection_max_retries=None``), and the Redis transport is
  :class:`RedisTransport`, whose channel survives being closed after Redis
  went away (a worker otherwise exits when Redis restarts, see the class),
  over TLS as well (``rediss://``, certificates verified, host name checked);
* the pools are sized from the threads that use them
  (:func:`redis_pool_size`, :func:`broker_pool_limit`).
"""

from __future__ import annotations

import logging
import os
from queue import Empty
from typing import Any
from urllib.parse import urlparse

from celery import Celery
from kombu.transport import redis as kombu_redis

from nepi_dist.engine.routing import POOL_QUEUE
from nepi_dist.engine.signing import SIGNING_KEY_ENV, signing_key
from nepi_dist.engine.tls import broker_ssl
from nepi_dist.model import secrets

REDIS_URL_ENV = "NEPI_DIST_REDIS_URL"
VISIBILITY_ENV = "NEPI_DIST_VISIBILITY_TIMEOUT"
HORIZON_ENV = "NEPI_DIST_ETA_HORIZON"
DEFAULT_VISIBILITY = 300.0
#: Threads a controller, an embedded worker and ``nepi-dist worker`` use by default (NEPI's 50).
NTHREADS_ENV = "NEPI_NTHREADS"
DEFAULT_NTHREADS = 50
#: Threads of a process, besides those that run actions, that use Redis: a worker's
#: heartbeat, application watcher and its 4 reporters, event loop; a controller's main,
#: failure-manager and scheduler threads; the rest is headroom.
SPARE_CONNECTIONS = 16

log = logging.getLogger("nepi_dist.engine.celery_app")


def default_threads() -> int:
    """Return the thread count a process uses when none is given: ``$NEPI_NTHREADS``, else 50.

    Raises ValueError when ``$NEPI_NTHREADS`` is set to anything but a positive integer.
    """
    raw = os.environ.get(NTHREADS_ENV, "").strip()
    if not raw:
        return DEFAULT_NTHREADS
    threads = int(raw) if raw.isdigit() else 0
    if threads < 1:
        raise ValueError(f"{NTHREADS_ENV} must be a positive integer, not {raw!r}")
    return threads


def worker_threads(concurrency: int) -> int:
    """Return the threads of a worker of ``concurrency`` that run actions: its Celery threads and
    as many batch threads (:attr:`nepi_dist.engine.tasks.WorkerRuntime.batch_pool`)."""
    return 2 * max(1, concurrency)


def redis_pool_size(threads: int) -> int:
    """Return the ``max_connections`` of a redis-py pool that ``threads`` threads use for the store.

    Every thread that touches a run's store keeps one connection of the pool
    for itself (:attr:`nepi_dist.engine.store.Store.client`, a single-connection
    client per thread) and borrows a second one while it runs a pipeline
    (redis-py pipelines take their own connection from the pool).  Hence
    two per thread, and :data:`SPARE_CONNECTIONS` for the helper threads.
    A worker passes :func:`worker_threads` (its concurrency); a controller
    its scheduler threads.  redis-py 8's default bound is 100: at NEPI's
    default of 50 threads a worker's 100 action threads needed up to 200,
    and actions failed with ``MaxConnectionsError: Too many connections``.
    Connections are opened on demand, so the bound costs nothing until used.
    """
    return 2 * max(1, threads) + SPARE_CONNECTIONS


def broker_pool_limit(threads: int) -> int:
    """Return the kombu connection (and producer) pool limit for ``threads`` threads that publish.

    Any thread that runs an action may publish (a batch thread too, when an
    action is held by another worker): a worker passes
    :func:`worker_threads`, a controller its scheduler threads.  Past the
    limit a publisher waits for a producer (Celery's default is 10).
    kombu's limit is one per process; :class:`NepiCelery` only ever raises it.
    """
    return max(1, threads) + SPARE_CONNECTIONS


def size_for_threads(app: Celery, concurrency: int) -> None:
    """Size ``app`` for a worker of ``concurrency`` threads: its batch threads and broker pool.

    Call it before the worker starts (``nepi-dist worker``, the embedded worker).
    """
    app.conf.worker_concurrency = concurrency  # also sizes the threads of batch messages
    limit = broker_pool_limit(worker_threads(concurrency))
    app.conf.broker_pool_limit = max(int(app.conf.broker_pool_limit or 0), limit)


def grow_redis_pool(client: Any, threads: int) -> None:
    """Let ``client``'s redis-py pool hold :func:`redis_pool_size` (``threads``) connections.

    For a client made before its process knew its threads (the worker
    runtime's, :func:`nepi_dist.engine.connection.redis_client`, whose fixed bound
    ``POOL_SIZE`` covers up to ~1000 worker threads): it only ever raises
    the pool's bound, never lowers it.
    """
    pool = client.connection_pool
    pool.max_connections = max(int(pool.max_connections), redis_pool_size(threads))


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
    the broker ``nepi_dist.engine.celery_app:RedisTransport://host:port/db`` in its logs.
    ``rediss://`` URLs use it too, with ``broker_use_ssl`` set from the URL's
    query (:func:`nepi_dist.engine.tls.broker_ssl`): kombu derives TLS from the
    scheme only for its own transport, and then without verification
    (``CERT_NONE``) unless the query says otherwise.  Sentinel URLs keep
    kombu's sentinel transport.
    """

    Channel = _RedisChannel


#: The ``broker_transport`` of an app whose broker URL is ``redis://``.
REDIS_TRANSPORT = f"{__name__}:{RedisTransport.__name__}"


class NepiCelery(Celery):
    """A Celery app whose broker pool limit never lowers another app's.

    kombu keeps one pool limit per process (``kombu.pools.set_limit``), and
    every app sets it to its ``broker_pool_limit`` when it first uses its
    pool, resizing the pools of every app of the process: a smaller limit
    shrinks them (``RuntimeError: Can't shrink pool when in use`` when they
    are in use).  Apps on the same broker share one pool anyway, so the
    limit a process needs is the largest any of its apps asks for.
    """

    @property
    def pool(self) -> Any:
        if self._pool is None and self.conf.broker_pool_limit:
            from kombu import pools

            self.conf.broker_pool_limit = max(int(self.conf.broker_pool_limit), int(pools.get_limit() or 0))
        return super().pool

    def close_broker_pools(self) -> None:
        """Close and forget this app's broker pools, which kombu keeps per broker for the whole process.

        Only for a broker no other app of the process uses (an embedded Redis
        about to stop): apps on one broker share these pools.
        """
        from kombu import pools
        from kombu.utils.collections import eqhash

        conn = self.connection_for_write()
        try:
            for group in (pools.producers, pools.connections):  # producers hold connections: first
                pool = dict.pop(group, eqhash(conn), None)  # keyed by eqhash (kombu's EqualityDict)
                if pool is not None:
                    pool.force_close_all()
        finally:
            conn.release()
        self.close()


def settings(redis_url: str, **overrides: Any) -> dict[str, Any]:
    """Return the Celery settings for a broker at ``redis_url``."""
    visibility = float(overrides.pop("visibility_timeout", os.environ.get(VISIBILITY_ENV, DEFAULT_VISIBILITY)))
    horizon = float(overrides.pop("eta_horizon", os.environ.get(HORIZON_ENV, visibility / 5)))
    if horizon >= visibility:
        raise ValueError(f"ETA horizon {horizon}s must be below the visibility timeout {visibility}s")
    try:
        threads = default_threads()
    except ValueError:
        threads = DEFAULT_NTHREADS  # refused where the threads are taken (the controller, the worker command)
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
        # The largest a process of $NEPI_NTHREADS threads may need; a worker raises it to its own.
        "broker_pool_limit": broker_pool_limit(worker_threads(threads)),
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
        # Celery censors settings named *KEY* wherever it shows them (inspect conf, banners).
        "nepi_signing_key": os.environ.get(SIGNING_KEY_ENV) or None,
    }
    if urlparse(redis_url).scheme in ("redis", "rediss"):
        conf["broker_transport"] = REDIS_TRANSPORT
        conf["broker_use_ssl"] = broker_ssl(redis_url)  # None on redis://
    conf.update(overrides)
    return conf


def create_app(redis_url: str | None = None, **overrides: Any) -> Celery:
    """Return a Celery app on ``redis_url`` (default: $NEPI_DIST_REDIS_URL) with nepi's tasks."""
    from nepi_dist.engine.eventloop import TimerCatchUp
    from nepi_dist.engine.tasks import register_tasks

    url = redis_url or os.environ.get(REDIS_URL_ENV) or "redis://127.0.0.1:6379/0"
    app = NepiCelery("nepi_dist", set_as_current=False)
    app.conf.update(settings(url, **overrides))
    #: The key signing and checking every action message (None: signing is off), see engine/signing.py.
    app.nepi_signing_key = signing_key(app.conf.nepi_signing_key or "")
    if app.nepi_signing_key is not None:
        secrets.remember(app.conf.nepi_signing_key)
    app.steps["worker"].add(TimerCatchUp)
    register_tasks(app)
    return app
