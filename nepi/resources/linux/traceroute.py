"""``nepi.resources.linux.traceroute``: NEPI's LinuxTraceroute (rtype ``LinuxTraceroute``), re-exported."""

from nepi_dist.resources.linux.tools import LinuxTraceroute

__all__ = ["LinuxTraceroute"]
