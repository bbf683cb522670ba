"""RM types and the raw Celery task the benchmarks use.

External workers load this module with ``--rm-module bench.rms``; importing it
registers the RM types in the process's ``ResourceFactory`` and declares the
raw ``bench.noop`` task as a Celery *shared task*, so every Celery app the
process finalises (the worker's own ``nepi_dist.engine.startup.app`` included) serves
it.  (``from nepi_dist.engine.startup import app`` cannot be used here: the worker
imports RM modules *before* it creates its app, so that import would be
circular.)

Raw tasks: ``bench.noop`` (throughput), ``bench.hop`` (a chain, each link
publishing the next) and ``bench.stamp`` (records when an ETA task ran).  RM
types: ``bench::Trivial``, ``bench::Node``, ``bench::App``, ``bench::Probe``
(an action recording when it ran) and ``bench::Critical`` (an action failing it).
"""

from __future__ import annotations

import threading
import time

import redis
from celery import Task, shared_task

from nepi_dist import ResourceFactory, ResourceManager, clsinit_copy, failtrap
from nepi_dist.engine.routing import POOL_QUEUE

NOOP_TASK = "bench.noop"
HOP_TASK = "bench.hop"
STAMP_TASK = "bench.stamp"

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


@shared_task(name=HOP_TASK, bind=True, ignore_result=True)
def hop(self: Task, key: str, i: int, total: int) -> None:
    """The raw chained hop: record when this link ran, then publish the next link."""
    _client(self.app.conf.nepi_redis_url).rpush(key, f"{time.time():.6f}")
    if i + 1 < total:
        self.app.send_task(HOP_TASK, args=[key, i + 1, total], task_id=f"{key}.{i + 1}", queue=POOL_QUEUE)


@shared_task(name=STAMP_TASK, bind=True, ignore_result=True)
def stamp(self: Task, key: str, due: float) -> None:
    """The raw ETA task: record "<when the body ran> <when it was due>" (epoch seconds)."""
    _client(self.app.conf.nepi_redis_url).rpush(key, f"{time.time():.6f} {due:.6f}")


def probe_key(exp_id: str) -> str:
    """The list where ``bench::Probe`` actions of experiment ``exp_id`` record when they ran."""
    return f"bench:probe:{exp_id}"


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


@clsinit_copy
class Probe(ResourceManager):
    """An RM whose ``probe`` action records "<when it ran> <when it was due>", as ``bench.stamp`` does."""

    _rtype = "bench::Probe"

    def probe(self, due: float) -> None:
        self.ec.store.client.rpush(probe_key(self.ec.exp_id), f"{time.time():.6f} {due:.6f}")


@clsinit_copy
class Critical(ResourceManager):
    """A critical RM whose ``crash`` action fails it (FAILED aborts the run)."""

    _rtype = "bench::Critical"

    @failtrap
    def crash(self) -> None:
        raise RuntimeError("bench::Critical crashed on purpose")


for _t in (Trivial, Node, App, Probe, Critical):
    ResourceFactory.register_type(_t)
