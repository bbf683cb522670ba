"""NEPI's Linux resource managers: hosts, applications and the tools built on them."""

from nepi_dist.resources.linux.application import LinuxApplication
from nepi_dist.resources.linux.node import LinuxNode
from nepi_dist.resources.linux.tools import LinuxPing, LinuxTcpdump, LinuxTraceroute, LinuxUdpTest

__all__ = ["LinuxApplication", "LinuxNode", "LinuxPing", "LinuxTcpdump", "LinuxTraceroute", "LinuxUdpTest"]
