"""``nepi.execution.scheduler``: NEPI's task names, re-exported from nepi_dist."""

from nepi_dist.engine.scheduler import Task, TaskStatus

__all__ = ["Task", "TaskStatus"]
