"""``nepi.resources.linux.ping``: NEPI's LinuxPing (rtype ``LinuxPing``), re-exported."""

from nepi_dist.resources.linux.tools import LinuxPing

__all__ = ["LinuxPing"]
