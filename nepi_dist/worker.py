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
from importlib.metadata import entry_points

from .app import create_app
from .resource import ResourceFactory, ResourceManager, ResourceRegistry

RM_MODULES_ENV = "NEPI_DIST_RM_MODULES"
ENTRY_POINT_GROUP = "nepi_dist.resources"

log = logging.getLogger("nepi_dist.worker")


def load_resource_types(modules: list[str], registry: ResourceRegistry = ResourceFactory) -> list[str]:
    """Import RM modules and entry points; register the RM classes they define.

    Returns the rtypes registered.  A module may register its types itself
    (``ResourceFactory.register_type``); every ResourceManager subclass it
    defines at module level is registered as well.
    """
    targets: list[object] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets.append(ep.load())
    for name in modules:
        targets.append(importlib.import_module(name))
    for target in targets:
        members = vars(target).values() if hasattr(target, "__dict__") and not isinstance(target, type) else [target]
        for obj in members:
            if isinstance(obj, type) and issubclass(obj, ResourceManager) and obj is not ResourceManager:
                registry.register_type(obj)
    return sorted(registry.resource_types())


def modules_from_env() -> list[str]:
    return [m.strip() for m in os.environ.get(RM_MODULES_ENV, "").split(",") if m.strip()]


load_resource_types(modules_from_env())
app = create_app()
