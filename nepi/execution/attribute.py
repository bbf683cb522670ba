"""``nepi.execution.attribute``: NEPI's attribute declarations, re-exported from nepi_dist."""

from nepi_dist.model.attribute import Attribute, Flags, Types

__all__ = ["Attribute", "Flags", "Types"]
