"""``nepi.resources.all.collector``: NEPI's Collector (rtype ``Collector``), re-exported."""

from nepi_dist.resources.collector import Collector

__all__ = ["Collector"]
