"""The ``nepi-dist`` command."""

from __future__ import annotations

import argparse
import os
import sys

from .routing import POOL_QUEUE


def _worker(args: argparse.Namespace) -> int:
    if args.redis_url:
        os.environ["NEPI_DIST_REDIS_URL"] = args.redis_url
    if args.rm_module:
        present = [m for m in os.environ.get("NEPI_DIST_RM_MODULES", "").split(",") if m]
        os.environ["NEPI_DIST_RM_MODULES"] = ",".join(present + args.rm_module)
    from .worker import app

    argv = [
        "worker",
        "--pool", args.pool,
        "--concurrency", str(args.concurrency),
        "--queues", ",".join(args.queues or [POOL_QUEUE]),
        "--loglevel", args.loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nepi-dist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a Celery worker serving nepi_dist actions")
    w.add_argument("--redis-url", help="broker and store (default $NEPI_DIST_REDIS_URL)")
    w.add_argument("--concurrency", type=int, default=int(os.environ.get("NEPI_NTHREADS", "50")))
    w.add_argument("--pool", default="threads", choices=["threads", "prefork", "solo"])
    w.add_argument("--queues", action="append", help=f"queues to consume (default {POOL_QUEUE})")
    w.add_argument("--rm-module", action="append", default=[], help="module defining RM types")
    w.add_argument("--hostname", help="Celery node name")
    w.add_argument("--loglevel", default="WARNING")
    w.set_defaults(func=_worker)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
