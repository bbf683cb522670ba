"""Which queue an RM action goes to: the one routing rule of nepi_dist.

An RM runs on the queue of a *host worker* when it is, or is connected to, a
``linux::Node`` whose ``worker`` attribute names that host: the worker runs
on the host itself, so its commands run locally, without SSH.  Everything
else goes to the shared pool queue, whose workers reach hosts over SSH.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nepi_dist.engine.context import RunContext

#: The queue served by every pool worker.
POOL_QUEUE = "nepi.pool"
#: The host a worker process serves (set by ``nepi-dist worker --host``).
WORKER_HOST_ENV = "NEPI_DIST_WORKER_HOST"
#: The rtype whose ``worker`` attribute routes its RMs.
NODE_RTYPE = "linux::Node"
#: The node attribute: seconds a deploy waits for a live worker of the node's host.
WORKER_WAIT = "workerWait"
DEFAULT_WORKER_WAIT = 60.0


def host_queue(host: str) -> str:
    """Return the queue of the worker serving ``host``."""
    return f"nepi.host.{host}"


def this_worker_host() -> str | None:
    """Return the host this worker process serves, if it is a host worker."""
    return os.environ.get(WORKER_HOST_ENV) or None


def queue_for(ctx: RunContext, guid: int) -> str:
    """Return the queue of the worker that must run actions of ``guid`` (cached per run)."""
    cache = ctx._routes
    queue = cache.get(guid)
    if queue is None:
        queue = _route(ctx, guid)
        cache[guid] = queue
    return queue


def route_many(ctx: RunContext, guids: Iterable[int]) -> None:
    """Fill the route cache for ``guids`` in a few round trips, however many they are.

    A deploy of N RMs, or a group releasing N starts, would otherwise pay
    one or two Redis reads per RM before publishing.
    """
    cache = ctx._routes
    todo = sorted({g for g in guids if g not in cache})
    if not todo:
        return
    conns = dict(zip(todo, ctx.store.connections_of_many(todo), strict=True))
    every = sorted({c for g in todo for c in (g, *conns[g])})
    unknown = [g for g in every if g not in ctx._rtypes]
    for g, rtype in zip(unknown, ctx.store.field_of_many(unknown, "rtype"), strict=True):
        if rtype is not None:
            ctx._rtypes[g] = rtype
    nodes = [g for g in every if ctx._rtypes.get(g) == NODE_RTYPE]
    hosts = dict(zip(nodes, ctx.store.field_of_many(nodes, "a:worker"), strict=True))
    for g in todo:
        queue = POOL_QUEUE
        for c in (g, *sorted(conns[g])):
            raw = hosts.get(c)
            host = json.loads(raw) if raw is not None else None
            if host:
                queue = host_queue(str(host))
                break
        cache[g] = queue


def host_node(ctx: RunContext, guid: int) -> tuple[int, str] | None:
    """Return (node guid, host) when ``guid`` is, or is connected to, a node with a host worker."""
    candidates = [guid, *sorted(ctx.store.connections(guid))]
    for g in candidates:
        if ctx._rtype(g) == NODE_RTYPE:
            raw = ctx.store.rm_field(g, "a:worker")
            host = json.loads(raw) if raw is not None else None
            if host:
                return g, str(host)
    return None


def _route(ctx: RunContext, guid: int) -> str:
    found = host_node(ctx, guid)
    return POOL_QUEUE if found is None else host_queue(found[1])
