"""``nepi.resources.linux.tcpdump``: NEPI's LinuxTcpdump (rtype ``LinuxTcpdump``), re-exported."""

from nepi_dist.resources.linux.tools import LinuxTcpdump

__all__ = ["LinuxTcpdump"]
