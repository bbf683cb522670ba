"""``nepi.execution.trace``: NEPI's trace declarations, re-exported from nepi_dist."""

from nepi_dist.model.trace import Trace, TraceAttr

__all__ = ["Trace", "TraceAttr"]
