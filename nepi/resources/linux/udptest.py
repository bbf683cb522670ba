"""``nepi.resources.linux.udptest``: NEPI's LinuxUdpTest (rtype ``LinuxUdpTest``), re-exported."""

from nepi_dist.resources.linux.tools import LinuxUdpTest

__all__ = ["LinuxUdpTest"]
