"""``nepi-dist worker`` (run a Celery worker serving nepi_dist actions) and ``nepi-dist workers`` (list them)."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from typing import Annotated

import typer

from nepi_dist.engine.celery_app import REDIS_URL_ENV, default_threads, size_for_threads
from nepi_dist.engine.routing import POOL_QUEUE, WORKER_HOST_ENV, host_queue
from nepi_dist.engine.tasks import QUEUES_ENV

#: A worker's Celery node name when none is given (``%h``: this machine's name).
DEFAULT_NAME = "nepi@%h"


class Pool(StrEnum):
    threads = "threads"
    prefork = "prefork"
    solo = "solo"


def worker(
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", help=f"Broker and store, the URL its controllers use (default ${REDIS_URL_ENV}; "
        "one of the two is required).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="Task threads (default $NEPI_NTHREADS, else 50); as many again run batch items.")] = None,
    pool: Annotated[Pool, typer.Option(help="Celery's execution pool.")] = Pool.threads,
    queues: Annotated[list[str] | None, typer.Option(
        "--queues", help=f"A queue to consume (repeatable; default {POOL_QUEUE}).")] = None,
    rm_module: Annotated[list[str] | None, typer.Option(
        "--rm-module", help="A module defining RM types (repeatable; also $NEPI_DIST_RM_MODULES).")] = None,
    hostname: Annotated[str | None, typer.Option(
        "--hostname", "-n", help=f"Celery node name, name@host as Celery writes it (default {DEFAULT_NAME}, "
        "HOST@%h with --host; %h is this machine's name).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery's log level.")] = "WARNING",
    host: Annotated[str | None, typer.Option(
        help="Serve this testbed host's queue: RMs on a linux::Node with worker=HOST run here.")] = None,
    pool_queue: Annotated[bool, typer.Option(
        "--pool-queue", help="Also serve the shared pool queue (served anyway without --host or --queues).")] = False,
    events: Annotated[bool, typer.Option(
        "--events", "-E", help="Send task events (for Flower and `celery events`).")] = False,
) -> None:
    """Run a Celery worker serving nepi_dist actions."""
    raise typer.Exit(_worker(redis_url, concurrency, pool.value, queues or [], rm_module or [], hostname,
                             loglevel, host, pool_queue, events))


def _worker(redis_url: str | None, concurrency: int | None, pool: str, queues: list[str], rm_module: list[str],
            hostname: str | None, loglevel: str, host: str | None, pool_queue: bool, events: bool) -> int:
    try:
        threads = concurrency if concurrency is not None else default_threads()
    except ValueError as exc:
        print(f"nepi-dist worker: {exc}", file=sys.stderr)
        return 2
    if threads < 1:
        print(f"nepi-dist worker: --concurrency must be a positive integer, not {threads}", file=sys.stderr)
        return 2
    if redis_url:
        os.environ[REDIS_URL_ENV] = redis_url
    elif not os.environ.get(REDIS_URL_ENV):
        print(f"nepi-dist worker: no Redis to serve: give --redis-url or set ${REDIS_URL_ENV} to the URL its\n"
              f"  controllers use. A controller with no ${REDIS_URL_ENV} starts its own embedded Redis and its\n"
              "  own in-process worker, and sends no work to any other.", file=sys.stderr)
        return 2
    if rm_module:
        present = [m for m in os.environ.get("NEPI_DIST_RM_MODULES", "").split(",") if m]
        os.environ["NEPI_DIST_RM_MODULES"] = ",".join(present + rm_module)
    queues = list(queues)
    if host:
        os.environ[WORKER_HOST_ENV] = host
        queues.append(host_queue(host))
        hostname = hostname or f"{host}@%h"
    if pool_queue and POOL_QUEUE not in queues:
        queues.append(POOL_QUEUE)
    queues = queues or [POOL_QUEUE]
    os.environ[QUEUES_ENV] = ",".join(queues)
    from nepi_dist.engine.startup import app

    refusal = _evicting_redis(str(app.conf.nepi_redis_url))
    if refusal:
        print(f"nepi-dist worker: {refusal}", file=sys.stderr)
        return 2
    size_for_threads(app, threads)  # its batch threads, broker pool and store pool (worker.py)

    argv = [
        "worker",
        "--pool", pool,
        "--concurrency", str(threads),
        "--queues", ",".join(queues),
        "--loglevel", loglevel,
        "--without-gossip",
        "--without-mingle",
        "--hostname", hostname or DEFAULT_NAME,
    ]
    if events:
        argv.append("--task-events")
    app.worker_main(argv)
    return 0


def _evicting_redis(url: str) -> str | None:
    """Return why the worker must not serve the Redis at ``url`` (it may evict keys), else None.

    A Redis not reachable yet is not refused here: the worker waits for it,
    and its runtime checks again once Redis answers.
    """
    import redis

    from nepi_dist.engine.connection import (
        check_no_eviction,
        durability_warning,
        permanent_failure,
        redis_client,
        typed_error,
    )
    from nepi_dist.errors import RedisAuthError, RedisConfigError, RedisTLSError

    client = redis_client(url, bound=2.0)
    try:
        check_no_eviction(client)
        warning = durability_warning(client)
        if warning:
            print(f"nepi-dist worker: warning: {warning}", file=sys.stderr)
    except (RedisConfigError, RedisTLSError, RedisAuthError) as exc:
        return str(exc)  # retrying cannot cure these
    except redis.RedisError as exc:
        return str(typed_error(exc)) if permanent_failure(exc) else None
    finally:
        client.close()
    return None


def workers(
    redis_url: Annotated[str | None, typer.Option("--redis-url", help=f"Default ${REDIS_URL_ENV}.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the live workers (from their heartbeats in Redis): Celery name, host, queues."""
    import redis

    from nepi_dist.cli.common import connect
    from nepi_dist.engine.connection import typed_error
    from nepi_dist.engine.keys import worker_pattern
    from nepi_dist.errors import NepiError

    client = connect(redis_url or os.environ.get(REDIS_URL_ENV))
    try:
        keys = sorted(client.scan_iter(match=worker_pattern()))
        values = client.mget(keys) if keys else []
    except (redis.RedisError, NepiError) as exc:
        error = typed_error(exc) if isinstance(exc, redis.RedisError) else exc
        print(f"nepi-dist workers: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    rows = [(k.split(":", 2)[2], json.loads(v)) for k, v in zip(keys, values, strict=True) if v is not None]
    rows = [(w, info) for w, info in rows if not info.get("dead")]
    if json_:
        print(json.dumps([dict(info, id=w) for w, info in rows]))
        return
    for worker_id, info in rows:
        name = info.get("name") or worker_id
        print(f"{name}\tpid={info.get('pid', '-')}\thost={info.get('host') or '-'}\t"
              f"queues={','.join(info.get('queues') or [])}")
    print(f"{len(rows)} live worker process(es)")


def register(app: typer.Typer) -> None:
    """Add this group's commands to ``app``."""
    app.command("worker", help=worker.__doc__)(worker)
    app.command("workers", help=workers.__doc__)(workers)
