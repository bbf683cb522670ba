"""RM types and the raw Celery task the benchmarks use.

External workers load this module with ``--rm-module bench.rms``; importing it
registers the RM types in the process's ``ResourceFactory`` and declares the
raw ``bench.noop`` task as a Celery *shared task*, so every Celery app the
process finalises (the worker's own ``nepi_dist.worker.app`` included) serves
it.  (``from nepi_dist.worker import app`` cannot be used here: the worker
imports RM modules *before* it creates its app, so that import would be
circular.)
"""

from __future__ import annotations

import threading

import redis
from celery import Task, shared_task

from nepi_dist import ResourceFactory, ResourceManager, clsinit_copy

NOOP_TASK = "bench.noop"

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> redis.Redis:
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.get(url)
            if client is None:
                client = redis.Redis.from_url(url)
                _clients[url] = client
    return client


@shared_task(name=NOOP_TASK, bind=True, ignore_result=True)
def noop(self: Task, counter: str, total: int) -> None:
    """The raw Celery floor: one INCR; the last task of a batch rings ``<counter>:done``."""
    client = _client(self.app.conf.nepi_redis_url)
    if client.incr(counter) == total:
        client.rpush(f"{counter}:done", 1)


@clsinit_copy
class Trivial(ResourceManager):
    """Default lifecycle; finishes by itself right after start (deploy, start, finish)."""

    _rtype = "bench::Trivial"

    def do_start(self) -> None:
        super().do_start()
        self.ec.schedule("0s", self.finish)


@clsinit_copy
class Node(ResourceManager):
    """NEPI's test Node without sleeps: default lifecycle, stays STARTED."""

    _rtype = "bench::Node"


@clsinit_copy
class App(ResourceManager):
    """NEPI's test Application without sleeps or polls.

    It deploys once its node is READY through a DEPLOY condition the benchmark
    registers (instead of NEPI's re-scheduling every 0.1 s), and finishes right
    after it started.
    """

    _rtype = "bench::App"

    def do_start(self) -> None:
        super().do_start()
        self.ec.schedule("0s", self.finish)


for _t in (Trivial, Node, App):
    ResourceFactory.register_type(_t)
