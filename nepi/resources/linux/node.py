"""``nepi.resources.linux.node``: NEPI's LinuxNode (rtype ``LinuxNode``), re-exported."""

from nepi_dist.resources.linux.node import LinuxNode

__all__ = ["LinuxNode"]
