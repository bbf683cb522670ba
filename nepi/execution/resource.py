"""``nepi.execution.resource``: NEPI's RM model, re-exported from nepi_dist."""

from nepi_dist.model.resource import (
    ResourceFactory,
    ResourceManager,
    ResourceRegistry,
    clsinit,
    clsinit_copy,
    failtrap,
    reschedule_delay,
)
from nepi_dist.model.state import ResourceAction, ResourceState, ResourceState2str

__all__ = [
    "ResourceAction",
    "ResourceFactory",
    "ResourceManager",
    "ResourceRegistry",
    "ResourceState",
    "ResourceState2str",
    "clsinit",
    "clsinit_copy",
    "failtrap",
    "reschedule_delay",
]
