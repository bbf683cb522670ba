"""Worker start-up: the app an external worker serves, and the RM types it knows.

``celery -A nepi_dist.worker worker -Q nepi.pool`` and ``nepi-dist worker``
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

from .app import create_app
from .resource import ResourceFactory, ResourceRegistry

RM_MODULES_ENV = "NEPI_DIST_RM_MODULES"
ENTRY_POINT_GROUP = "nepi_dist.resources"

log = logging.getLogger("nepi_dist.worker")


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


@signals.worker_ready.connect
def _start_watching(sender: object = None, **_: object) -> None:
    """Start adopting applications whose watcher died (e.g. the worker before a restart)."""
    from .resources.linux.watcher import watcher_for

    watcher_for(app)
