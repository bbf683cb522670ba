"""The ``nepi-dist`` command."""

from __future__ import annotations

import argparse
import os
import sys

from nepi_dist.engine.celery_app import default_threads, size_for_threads
from nepi_dist.engine.routing import POOL_QUEUE, WORKER_HOST_ENV, host_queue
from nepi_dist.engine.tasks import QUEUES_ENV


def _worker(args: argparse.Namespace) -> int:
    try:
        concurrency = args.concurrency if args.concurrency is not None else default_threads()
    except ValueError as exc:
        print(f"nepi-dist worker: {exc}", file=sys.stderr)
        return 2
    if concurrency < 1:
        print(f"nepi-dist worker: --concurrency must be a positive integer, not {concurrency}", file=sys.stderr)
        return 2
    if args.redis_url:
        os.environ["NEPI_DIST_REDIS_URL"] = args.redis_url
    if args.rm_module:
        present = [m for m in os.environ.get("NEPI_DIST_RM_MODULES", "").split(",") if m]
        os.environ["NEPI_DIST_RM_MODULES"] = ",".join(present + args.rm_module)
    queues = list(args.queues or [])
    if args.host:
        os.environ[WORKER_HOST_ENV] = args.host
        queues.append(host_queue(args.host))
        args.hostname = args.hostname or f"{args.host}@%h"
    if args.pool_queue and POOL_QUEUE not in queues:
        queues.append(POOL_QUEUE)
    queues = queues or [POOL_QUEUE]
    os.environ[QUEUES_ENV] = ",".join(queues)
    from nepi_dist.engine.startup import app

    refusal = _evicting_redis(str(app.conf.nepi_redis_url))
    if refusal:
        print(f"nepi-dist worker: {refusal}", file=sys.stderr)
        return 2
    size_for_threads(app, concurrency)  # its batch threads, broker pool and store pool (worker.py)

    argv = [
        "worker",
        "--pool", args.pool,
        "--concurrency", str(concurrency),
        "--queues", ",".join(queues),
        "--loglevel", args.loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def _evicting_redis(url: str) -> str | None:
    """Return why the worker must not serve the Redis at ``url`` (it may evict keys), else None.

    A Redis not reachable yet is not refused here: the worker waits for it,
    and its runtime checks again once Redis answers.
    """
    import redis

    from nepi_dist.engine.connection import check_no_eviction, durability_warning, redis_client
    from nepi_dist.errors import RedisConfigError

    client = redis_client(url, bound=2.0)
    try:
        check_no_eviction(client)
        warning = durability_warning(client)
        if warning:
            print(f"nepi-dist worker: warning: {warning}", file=sys.stderr)
    except RedisConfigError as exc:
        return str(exc)
    except redis.RedisError:
        return None
    finally:
        client.close()
    return None


def _workers(args: argparse.Namespace) -> int:
    import json

    import redis

    from nepi_dist.engine.celery_app import REDIS_URL_ENV
    from nepi_dist.engine.keys import worker_pattern

    url = args.redis_url or os.environ.get(REDIS_URL_ENV)
    if not url:
        print("nepi-dist workers: give --redis-url or set NEPI_DIST_REDIS_URL", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = sorted(client.scan_iter(match=worker_pattern()))
    rows = [(k.split(":", 2)[2], json.loads(v)) for k, v in zip(keys, client.mget(keys) if keys else [], strict=True)
            if v is not None]
    for worker_id, info in rows:
        print(f"{worker_id}\thost={info.get('host') or '-'}\tqueues={','.join(info.get('queues') or [])}")
    print(f"{len(rows)} live worker process(es)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``nepi-dist`` command (its subcommands carry their function)."""
    parser = argparse.ArgumentParser(prog="nepi-dist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a Celery worker serving nepi_dist actions")
    w.add_argument("--redis-url", help="broker and store (default $NEPI_DIST_REDIS_URL)")
    w.add_argument("--concurrency", type=int,
                   help="task threads (default $NEPI_NTHREADS, else 50); as many again run batch items")
    w.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
    w.add_argument("--queues", action="append", help=f"queues to consume (default {POOL_QUEUE})")
    w.add_argument("--rm-module", action="append", default=[], help="module defining RM types")
    w.add_argument("--hostname", help="Celery node name")
    w.add_argument("--loglevel", default="WARNING")
    w.add_argument("--host", help="serve this host's queue: RMs on a linux::Node with worker=HOST run here")
    w.add_argument("--pool-queue", action="store_true",
                   help="also serve the shared pool queue (served anyway without --host or --queues)")
    w.set_defaults(func=_worker)
    ls = sub.add_parser("workers", help="list the live workers and their queues")
    ls.add_argument("--redis-url", help="default $NEPI_DIST_REDIS_URL")
    ls.set_defaults(func=_workers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
