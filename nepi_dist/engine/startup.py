"""Worker start-up: the app an external worker serves, and the RM types it knows.

``celery -A nepi_dist.engine.startup worker -Q nepi.pool`` and ``nepi-dist worker``
run the same app.  RM types come only from code the operator named: entry
points in the ``nepi_dist.resources`` group, and modules listed in
``$NEPI_DIST_RM_MODULES`` (comma separated) or ``--rm-module``.  A message
never names code to import.
"""

from __future__ import annotations

import importlib
import logging
import os

from celery import signals

from nepi_dist.engine.celery_app import create_app, grow_redis_pool, size_for_threads, worker_threads
from nepi_dist.model.resource import ResourceFactory, ResourceRegistry

RM_MODULES_ENV = "NEPI_DIST_RM_MODULES"
ENTRY_POINT_GROUP = "nepi_dist.resources"

log = logging.getLogger("nepi_dist.engine.startup")


def load_resource_types(modules: list[str], registry: ResourceRegistry = ResourceFactory) -> list[str]:
    """Import RM modules and entry points; register the RM classes they define.

    Returns the rtypes registered.  A module may register its types itself
    (``ResourceFactory.register_type``); every ResourceManager subclass it
    defines at module level is registered as well.
    """
    registry.load_entry_points()
    for name in modules:
        registry.register_module(importlib.import_module(name))
    return sorted(registry.resource_types())


def modules_from_env() -> list[str]:
    return [m.strip() for m in os.environ.get(RM_MODULES_ENV, "").split(",") if m.strip()]


load_resource_types(modules_from_env())
app = create_app()


@signals.celeryd_init.connect
def _record_name(sender: object = None, conf: object = None, **_: object) -> None:
    """Keep this worker's Celery node name (``name@host``) for its heartbeat (``nepi-dist workers``)."""
    if conf is app.conf and isinstance(sender, str):
        app.nepi_worker_name = sender


@signals.worker_ready.connect
def _start_watching(sender: object = None, **_: object) -> None:
    """Before this app's worker runs a task: size its runtime's Redis pool for the worker's
    threads, and start adopting applications whose watcher died (e.g. the worker before a restart).

    ``nepi-dist worker`` has sized the app already; ``celery -A nepi_dist.engine.startup
    worker -c N`` has not (Celery keeps ``-c`` on the worker, not in the app's
    settings), so the threads come from the worker the signal is about.
    """
    if getattr(sender, "app", app) is not app:
        return  # another app's worker (an embedded one) in this process
    from nepi_dist.engine.tasks import runtime_of
    from nepi_dist.resources.linux.watcher import watcher_for

    threads = int(app.conf.worker_concurrency or 0)
    if not threads:
        threads = int(getattr(getattr(sender, "controller", None), "concurrency", 0) or 0)
        if threads:
            size_for_threads(app, threads)
    grow_redis_pool(runtime_of(app).client, worker_threads(threads))
    watcher_for(app)
